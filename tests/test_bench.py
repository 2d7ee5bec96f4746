"""Lesson 07's benchmark (course/bench.py): its quick mode really measures every target,
and what it writes is consistent with itself and with the model.

One quick run (about 18 s: every lesson server started as a real process, each target checked against
the in-process model, then loaded for 1 s) is shared by the tests that read its results.
"""

import csv
import shutil
import statistics

import pytest

from course import bench

NETWORK = {(t.name, t.rows) for t in bench.targets() if t.server}
EVERY_TARGET = {(t.name, t.rows) for t in bench.targets()}
FASTAPI_ONE = next(t for t in bench.targets() if t.name == "FastAPI async def" and t.rows == 1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return bench.run(quick=True, csv_path=tmp_path_factory.mktemp("bench") / "quick.csv", log=lambda *_: None)


@pytest.fixture(scope="module")
def written(quick):
    with open(quick.csv, newline="") as f:
        return {(row["target"], int(row["rows_per_request"])): row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def fastapi():
    with bench.SERVERS["fastapi"]() as server:
        yield server


def test_every_target_is_measured_once_and_written(quick, written):
    assert set(written) == EVERY_TARGET
    assert len(quick.rows) == len(EVERY_TARGET) == 12
    assert {(m["target"], m["rows_per_request"]) for m in quick.rounds} == EVERY_TARGET


@pytest.mark.parametrize("key", sorted(EVERY_TARGET), ids=lambda key: f"{key[0]} x{key[1]}")
def test_measurements_are_sane(written, key):
    row = written[key]
    requests, rate = int(row["requests"]), float(row["requests_per_s"])
    assert int(row["errors"]) == 0
    assert requests >= 20, "a 1 s run that completes fewer than 20 requests measured nothing useful"
    seconds = 1.0 if key in NETWORK else 0.25  # one round: 1 s per server, a quarter of that for the model
    assert requests == pytest.approx(rate * seconds, rel=0.25)
    assert 0 < float(row["p50_ms"]) <= float(row["p99_ms"]) < 2000
    assert float(row["rows_per_s"]) == pytest.approx(rate * key[1], rel=1e-3)
    # Every request runs predict_proba once, so a server cannot spend less CPU per request than the
    # model alone does per call (measured in this process). Made-up or mismatched numbers would not agree.
    model_alone = float(written["model in-process", key[1]]["server_cpu_ms_per_request"])
    assert float(row["server_cpu_ms_per_request"]) >= 0.8 * model_alone > 0
    if key in NETWORK:
        assert int(row["concurrency"]) == bench.CONCURRENCY
        assert int(row["request_bytes"]) > 0 and int(row["response_bytes"]) > 0
        assert float(row["client_cpu_percent"]) > 0
        http_tool = "wrk" if shutil.which("wrk") else "loadgen.py"
        assert row["load_generator"] == (http_tool if row["protocol"].startswith("HTTP") else "loadgen.py")
    else:
        assert row["load_generator"] == "none" and int(row["concurrency"]) == 1


def test_a_batch_of_100_carries_more_rows_per_second_than_single_rows(quick):
    for name in {t.name for t in bench.targets()}:
        assert bench.find(quick.rows, name, bench.BATCH)["rows_per_s"] > bench.find(quick.rows, name, 1)["rows_per_s"]


def test_message_sizes_are_those_of_the_contracts(written):
    assert int(written["gRPC", 1]["request_bytes"]) == 18  # tag, length, 4 x float32
    assert int(written["gRPC", 100]["request_bytes"]) == 100 * 20
    assert int(written["FastAPI async def", 1]["request_bytes"]) == len(bench.rest([bench.ONE_ROW])) == 82
    assert int(written["gRPC", 1]["response_bytes"]) < int(written["FastAPI async def", 1]["response_bytes"])


def test_a_server_giving_another_answer_is_refused_before_it_is_measured(fastapi):
    bench.check(FASTAPI_ONE, fastapi)  # the real target passes
    virginica = bench.BATCH_ROWS[-1]   # sent instead of the flower the model is asked about
    wrong = bench.Target("FastAPI async def", "fastapi", "/predict", 1, bench.rest([virginica]), bench.read_rest)
    with pytest.raises(AssertionError, match="does not give the model's answer"):
        bench.check(wrong, fastapi)


@pytest.mark.parametrize("tool", ["wrk", "loadgen.py"])
def test_error_answers_are_counted_as_errors_not_as_fast_answers(fastapi, tool, tmp_path):
    if tool == "wrk" and not shutil.which("wrk"):
        pytest.skip("wrk is not installed: install wrk (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")
    body = tmp_path / "empty.json"
    body.write_bytes(b"{}")  # four missing features: 422
    if tool == "wrk":
        result = bench.with_wrk(fastapi.url + "/predict", body, 1, 2)
    else:
        result = bench.with_loadgen("http", fastapi.address, "/predict", body, 0.3, 2)
    assert result["requests"] > 0
    assert result["errors"] == result["requests"]


def test_the_python_load_generator_measures_too(fastapi, tmp_path):
    result = bench.measure(FASTAPI_ONE, fastapi, 0.5, 2, "loadgen.py", tmp_path)
    assert result["load_generator"] == "loadgen.py"
    assert result["errors"] == 0 and result["requests"] > 10
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["server_cpu"] > 0 and result["client_cpu"] > 0


def test_the_mlserver_verdict_compares_each_round_back_to_back():
    def m(target, round_number, requests):
        return {"target": target, "rows_per_request": 1, "round": round_number, "requests": requests, "seconds": 2.0}
    rounds = [m("FastAPI async def", 1, 900), m("MLServer (V2)", 1, 1000),   # 0.9
              m("FastAPI async def", 2, 1200), m("MLServer (V2)", 2, 1000),  # 1.2
              m("FastAPI async def", 3, 500), m("MLServer (V2)", 3, 400)]    # 1.25
    ratio, ratios = bench.mlserver_verdict(rounds)
    assert ratios == pytest.approx([0.9, 1.2, 1.25])
    assert ratio == pytest.approx(statistics.median([0.9, 1.2, 1.25]))

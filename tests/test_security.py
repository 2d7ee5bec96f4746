"""Lesson 10: the secured servers, attacked as real processes over real sockets on 127.0.0.1.

Who may call (401/403/200 on REST, UNAUTHENTICATED/PERMISSION_DENIED/OK on gRPC), over what (TLS and mutual TLS
with certificates made here by trustme: good, wrong CA, no client certificate, plaintext), how big (413, 408,
RESOURCE_EXHAUSTED), what the server loads (a signed model; a tampered one refused), how it is deployed (the
manifest validated offline, then the server started with its env) and that it writes nothing while it runs.
Rate limits, error bodies and logs under attack: tests/test_security_attacks.py.
"""

import copy
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time

import grpc
import kubernetes_validate
import pytest
import requests
import trustme
import yaml

from course import LESSONS, REPO, import_lesson
from course.server import ServerFailedToStart, http_ready, start_server
from test_lesson_files import ENGINE_SWITCH

LESSON = LESSONS / "10-security"
REST, GRPC = "lessons/10-security/app.py", "lessons/10-security/grpc_server.py"
client = import_lesson("10-security/client.py")
security = import_lesson("10-security/security.py")
model_pb2 = import_lesson("10-security/model_pb2.py")
K1, K2 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)  # two valid keys at once: a rotation
WRONG = secrets.token_urlsafe(32)
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
FEATURES = list(ROW.values())


def https_ready(ca, cert=None):
    def ready(server):
        try:
            return requests.get(f"https://{server.address}/health", verify=str(ca), cert=cert, timeout=1).ok
        except requests.RequestException:
            return False
    return ready


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A private CA, a server certificate for 127.0.0.1, a client certificate, and a CA nobody here trusts."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server, client_cert, rogue = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("iris-client.example"), \
        stranger.issue_cert("iris-client.example")
    files = {"ca.pem": ca.cert_pem, "stranger.pem": stranger.cert_pem,
             "server.pem": server.cert_chain_pems[0], "server.key": server.private_key_pem,
             "client.pem": client_cert.cert_chain_pems[0], "client.key": client_cert.private_key_pem,
             "rogue.pem": rogue.cert_chain_pems[0], "rogue.key": rogue.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(folder / name)
    return {name.replace(".", "_"): folder / name for name in files}


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory, model):
    """A copy of the model with its metadata signed by a key made here; the public key's path; the private key."""
    folder = tmp_path_factory.mktemp("signed")
    shutil.copy(model.path, folder / model.path.name)
    shutil.copy(model.path.with_suffix(".json"), folder / "iris.json")
    security.keygen(str(folder / "signer.pem"))
    security.sign(str(folder / "iris.json"), str(folder / "signer.pem"))
    return folder / model.path.name, folder / "signer.pub", folder / "signer.pem"


@pytest.fixture(scope="module")
def servers(pki, signed_model):
    """servers(name) starts that configuration the first time it is asked for; all stop at module end."""
    model_path, public_key, _ = signed_model
    tls = {"TLS_CERT": str(pki["server_pem"]), "TLS_KEY": str(pki["server_key"])}
    mtls = {**tls, "TLS_CLIENT_CA": str(pki["ca_pem"])}
    configs = {
        "rest": (REST, {"BODY_SECONDS": "1"}, http_ready("/health")),
        "rest-tls": (REST, tls, https_ready(pki["ca_pem"])),
        "rest-mtls": (REST, mtls, https_ready(pki["ca_pem"], (str(pki["client_pem"]), str(pki["client_key"])))),
        "grpc": (GRPC, {}, client.ready()),
        "grpc-tls": (GRPC, tls, client.ready(pki["ca_pem"])),
        "grpc-mtls": (GRPC, mtls, client.ready(pki["ca_pem"], pki["client_pem"], pki["client_key"])),
    }
    started = {}

    def get(name):
        if name not in started:
            script, env, ready = configs[name]
            env = {"API_KEYS": f"{K1},{K2}", "MODEL_PATH": str(model_path), "MODEL_PUBLIC_KEY": str(public_key),
                   "RATE_PER_SECOND": "1000", "RATE_BURST": "1000", "DRAIN_SECONDS": "0", **env}  # drain: lesson 05
            started[name] = start_server(script, env=env, ready=ready)
        return started[name]

    yield get
    for server in started.values():
        server.stop()


def post(url, key=None, path="/predict", body=ROW, **options):
    headers = {"X-API-Key": key} if key is not None else {}
    return requests.post(url + path, json=body, headers=headers, timeout=10, **options)


# ---- who may call: REST ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, body", [("POST", "/predict", ROW), ("GET", "/model", None),
                                                ("POST", "/predict/batch", {"instances": [ROW]})])
def test_rest_answers_401_without_a_key_403_with_a_wrong_one_and_200_with_either_valid_key(servers, method, path, body):
    url = servers("rest").url
    for key, status in [(None, 401), ("", 401), (WRONG, 403), (K1[:-1], 403), (K1 + "x", 403), (K1, 200), (K2, 200)]:
        headers = {"X-API-Key": key} if key is not None else {}
        response = requests.request(method, url + path, json=body, headers=headers, timeout=10)
        assert response.status_code == status, (key == K1, response.text)
        assert response.headers["content-type"] == "application/json"
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "APIKey"  # RFC 9110: a 401 names its scheme
            assert response.json() == {"detail": "missing API key: send it in the X-API-Key header"}
        elif status == 403:
            assert response.json() == {"detail": "the API key is not valid"}
    health = requests.get(url + "/health", timeout=5)  # open for probes, and it says nothing else
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_a_key_that_is_not_text_is_refused_not_a_crash(servers):
    # Raw header bytes no HTTP library would send: hmac.compare_digest(str, str) raises TypeError on non-ASCII
    # text, so the server compares digests of bytes and answers 403, not 500.
    server = servers("rest")
    body = json.dumps(ROW).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: \xff\xfe\xe9" + K1[3:].encode() + b"\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]


def test_docs_show_the_lock_and_health_needs_no_key(servers):
    url = servers("rest").url
    schema = requests.get(url + "/openapi.json", timeout=5).json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "One of the server's API keys"}
    for path, method in [("/predict", "post"), ("/predict/batch", "post"), ("/model", "get")]:
        assert schema["paths"][path][method]["security"] == [{"APIKeyHeader": []}], path
        assert {"401", "403", "429"} <= set(schema["paths"][path][method]["responses"])
    assert "security" not in schema["paths"]["/health"]["get"]
    docs = requests.get(url + "/docs", timeout=5)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("script", [REST, GRPC])
def test_a_server_without_keys_or_with_a_short_key_refuses_to_start(script):
    # Fail closed: a server with no keys would answer anyone. Its log names the problem, never the key itself.
    with pytest.raises(ServerFailedToStart, match="no API keys: set API_KEYS"):
        start_server(script, env={"API_KEYS": " , "}, ready=lambda server: False)
    short = "short-" + secrets.token_hex(4)
    with pytest.raises(ServerFailedToStart, match="shorter than 32 characters") as refused:
        start_server(script, env={"API_KEYS": f"{K1},{short}"}, ready=lambda server: False)
    assert short not in str(refused.value) and K1 not in str(refused.value)
    assert security.fingerprint(short) in str(refused.value)


# ---- who may call: gRPC ----------------------------------------------------------------------------------------

def test_grpc_answers_unauthenticated_permission_denied_and_ok(servers, model):
    server = servers("grpc")
    with client.channel(server.address) as chan:
        for key, code in [(None, grpc.StatusCode.UNAUTHENTICATED), (WRONG, grpc.StatusCode.PERMISSION_DENIED),
                          (K1[:-1], grpc.StatusCode.PERMISSION_DENIED)]:
            with pytest.raises(grpc.RpcError) as refused:
                client.predict(chan, key, FEATURES)
            assert refused.value.code() == code
        for key in (K1, K2):
            reply = client.predict(chan, key, FEATURES)
            assert reply.label == model.classes[int(model.estimator.predict([FEATURES])[0])]
        assert client.serving(chan)  # health: no key, as Kubernetes' gRPC probe sends none


def test_grpc_reflection_needs_a_key(servers):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(chan, metadata=()):
        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            metadata=metadata, timeout=5)
        return [service.name for reply in replies for service in reply.list_services_response.service]

    with client.channel(servers("grpc").address) as chan:
        with pytest.raises(grpc.RpcError) as refused:
            list_services(chan)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "ModelService" in list_services(chan, (("x-api-key", K1),))


# ---- over what: TLS and mutual TLS -----------------------------------------------------------------------------

def refused_grpc(address, *credentials):
    with client.channel(address, *credentials) as chan, pytest.raises(grpc.RpcError) as refused:
        client.predict(chan, K1, FEATURES, timeout=5)
    return refused.value.code()


def test_grpc_over_tls_works_for_a_client_that_trusts_the_ca_and_for_no_other(servers, pki):
    address = servers("grpc-tls").address
    with client.channel(address, pki["ca_pem"]) as chan:
        assert client.predict(chan, K1, FEATURES).label
        with pytest.raises(grpc.RpcError) as refused:  # TLS does not replace the key: it protects it on the way
            client.predict(chan, None, FEATURES)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused_grpc(address) == grpc.StatusCode.UNAVAILABLE  # plaintext client
    assert refused_grpc(address, pki["stranger_pem"]) == grpc.StatusCode.UNAVAILABLE  # trusts another CA


def test_grpc_over_mutual_tls_needs_a_client_certificate_from_the_ca(servers, pki):
    address = servers("grpc-mtls").address
    with client.channel(address, pki["ca_pem"], pki["client_pem"], pki["client_key"]) as chan:
        assert client.predict(chan, K1, FEATURES).label
    assert refused_grpc(address, pki["ca_pem"]) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert refused_grpc(address, pki["ca_pem"], pki["rogue_pem"], pki["rogue_key"]) == grpc.StatusCode.UNAVAILABLE
    assert refused_grpc(address) == grpc.StatusCode.UNAVAILABLE  # plaintext


def test_rest_over_tls_and_mutual_tls(servers, pki):
    tls = servers("rest-tls")
    https = f"https://{tls.address}"
    assert post(https, K1, verify=str(pki["ca_pem"])).status_code == 200
    assert post(https, None, verify=str(pki["ca_pem"])).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):  # the server's certificate is not from a CA we trust
        post(https, K1, verify=str(pki["stranger_pem"]))
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to a TLS port: no answer
        post(tls.url, K1)
    mtls = f"https://{servers('rest-mtls').address}"
    cert = (str(pki["client_pem"]), str(pki["client_key"]))
    assert post(mtls, K1, verify=str(pki["ca_pem"]), cert=cert).status_code == 200
    for other in (None, (str(pki["rogue_pem"]), str(pki["rogue_key"]))):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one; TLS 1.3 may see a reset
            post(mtls, K1, verify=str(pki["ca_pem"]), cert=other)


# ---- how much: size, batch, time ------------------------------------------------------------------------------

def test_rest_limits_body_size_batch_size_and_body_time(servers):
    server = servers("rest")
    big = requests.post(server.url + "/predict", data=json.dumps(ROW) + " " * 2**20, timeout=10,
                        headers={"X-API-Key": K1, "Content-Type": "application/json"})
    assert big.status_code == 413 and "larger than 1048576 bytes" in big.json()["detail"]
    batch = post(server.url, K1, "/predict/batch", {"instances": [ROW] * 1001})
    assert batch.status_code == 422 and batch.json()["detail"].startswith("instances:")
    # A client that sends its headers, then the body one byte at a time and stops: 408 after BODY_SECONDS (1 s).
    body = json.dumps(ROW).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {K1}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        start = time.monotonic()
        assert requests.get(server.url + "/health", timeout=5).ok  # the slow client holds nobody else up
        answer = b""
        while not answer.endswith(b"}") and (chunk := sock.recv(65536)):  # headers and body may come apart
            answer += chunk
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"the body did not arrive within 1 s" in answer
    assert waited < 5, f"408 after {waited:.1f} s"


def test_grpc_limits_message_size_and_batch_size(servers):
    server = servers("grpc")
    with client.channel(server.address) as chan:
        stub = import_lesson("10-security/model_pb2_grpc.py").ModelServiceStub(chan)
        metadata = (("x-api-key", K1),)
        huge = model_pb2.PredictRequest(features=[1.0] * (300 * 1024))  # 1.2 MB on the wire
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(huge, metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        batch = model_pb2.PredictBatchRequest(instances=[model_pb2.PredictRequest(features=FEATURES)] * 1001)
        with pytest.raises(grpc.RpcError) as refused:
            stub.PredictBatch(batch, metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.predict(chan, K1, FEATURES).label  # and it still serves


# ---- what it loads: a signed model ----------------------------------------------------------------------------

def tampered_copy(signed_model, folder, change):
    model_path, public_key, _ = signed_model
    for path in (model_path, model_path.with_suffix(".json"), model_path.with_suffix(".json.sig")):
        shutil.copy(path, folder / path.name)
    change(folder / model_path.name, folder / "iris.json", folder / "iris.json.sig")
    return {"MODEL_PATH": str(folder / model_path.name), "MODEL_PUBLIC_KEY": str(public_key), "API_KEYS": K1}


def swap_features(model_path, metadata, signature):
    # The sha256 still matches (it covers the artifact, not the metadata); only the signature sees this.
    meta = json.loads(metadata.read_text())
    meta["features"] = meta["features"][::-1]
    metadata.write_text(json.dumps(meta))


def replace_both(model_path, metadata, signature):
    # Whoever can write both files makes them agree: a new artifact, its sha256 in the metadata.
    model_path.write_bytes(model_path.read_bytes() + b"\0")
    meta = json.loads(metadata.read_text())
    meta["sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
    metadata.write_text(json.dumps(meta))


def signed_by_someone_else(model_path, metadata, signature):
    security.keygen(str(model_path.parent / "other.pem"))
    security.sign(str(metadata), str(model_path.parent / "other.pem"))


@pytest.mark.parametrize("change, message", [
    (swap_features, "iris.json is not signed by the key in MODEL_PUBLIC_KEY"),
    (replace_both, "iris.json is not signed by the key in MODEL_PUBLIC_KEY"),
    (signed_by_someone_else, "iris.json is not signed by the key in MODEL_PUBLIC_KEY"),
    (lambda model, metadata, signature: signature.unlink(), "iris.json.sig is missing"),
], ids=["features-swapped", "artifact-and-hash-replaced", "signed-by-another-key", "no-signature"])
def test_a_tampered_model_is_refused(signed_model, tmp_path, change, message):
    env = tampered_copy(signed_model, tmp_path, change)
    with pytest.raises(ServerFailedToStart, match=message):
        start_server(GRPC, env=env, ready=lambda server: False)


def test_the_signed_model_loads_and_a_sha256_mismatch_is_still_refused(signed_model, tmp_path, servers):
    assert "model signature verified" in servers("rest").log()  # every server of this module ran on the signed copy
    env = tampered_copy(signed_model, tmp_path, lambda model, metadata, signature: model.write_bytes(b"x"))
    with pytest.raises(ServerFailedToStart, match="its sha256 is"):
        start_server(GRPC, env=env, ready=lambda server: False)


# ---- how it is deployed: the manifest, and a server that writes nothing ---------------------------------------

MANIFESTS = [LESSON / "k8s" / "deployment.yaml", LESSON / "secrets.example.yaml"]
DOCS = [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version() + ".0"])
@pytest.mark.parametrize("name, doc", DOCS, ids=[f"{n}:{d['kind']}:{d['metadata']['name']}" for n, d in DOCS])
def test_manifests_are_valid_kubernetes(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def deployment():
    return next(doc for _, doc in DOCS if doc["kind"] == "Deployment")


def test_the_pod_runs_as_non_root_on_a_read_only_filesystem_with_no_capabilities():
    pod = deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security_context = container["securityContext"]
    assert security_context["readOnlyRootFilesystem"] is True
    assert security_context["allowPrivilegeEscalation"] is False
    assert security_context["capabilities"] == {"drop": ["ALL"]}
    assert security_context.get("privileged", False) is False
    assert all(mount.get("readOnly") for mount in container["volumeMounts"] if mount["mountPath"] != "/tmp")
    # The keys and the TLS key come from Secrets the example describes, never from the env's literal values.
    secrets_described = {doc["metadata"]["name"] for _, doc in DOCS if doc["kind"] == "Secret"}
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == secrets_described
    env = {item["name"]: item["value"] for item in container["env"]}
    assert "API_KEYS" not in env and env["API_KEYS_FILE"].startswith("/etc/iris/keys/")


def test_the_server_starts_as_the_manifest_says_with_the_secrets_files(tmp_path, pki, signed_model, model):
    # The pod's env, with each Secret's mount replaced by a folder here holding the files the Secret would hold.
    (container,) = copy.deepcopy(deployment())["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "keys").write_text(f"{K1}\n{K2}\n")  # one key per line, as `--from-file=keys=...` stores
    (tmp_path / "tls").mkdir()
    shutil.copy(pki["server_pem"], tmp_path / "tls" / "tls.crt")  # the names `kubectl create secret tls` uses
    shutil.copy(pki["server_key"], tmp_path / "tls" / "tls.key")
    env = {}
    for item in container["env"]:
        value = item["value"].replace(mounts["api-keys"], str(tmp_path / "keys"))
        env[item["name"]] = value.replace(mounts["tls"], str(tmp_path / "tls"))
    assert set(env) <= set(server_env_names()), "the manifest sets a variable the server does not read"
    model_path, public_key, _ = signed_model
    env.update(HOST="127.0.0.1", PORT=None, DRAIN_SECONDS="0",
               MODEL_PATH=str(model_path), MODEL_PUBLIC_KEY=str(public_key))
    env = {name: value for name, value in env.items() if value is not None}
    with start_server(container["command"][1], env=env, ready=https_ready(pki["ca_pem"])) as server:
        https = f"https://{server.address}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["scheme"] == "HTTPS"
            assert requests.get(https + container[probe]["httpGet"]["path"], verify=str(pki["ca_pem"]), timeout=5).ok
        for key in (K1, K2):  # both keys of the mounted file: one can be rotated out without downtime
            assert post(https, key, verify=str(pki["ca_pem"])).status_code == 200
        assert post(https, WRONG, verify=str(pki["ca_pem"])).status_code == 403


def server_env_names():
    source = "".join((LESSON / name).read_text() for name in ("app.py", "security.py"))
    names = {"HOST", "PORT", "MODEL_PATH", "DRAIN_SECONDS", "API_KEYS", "API_KEYS_FILE", "TLS_CERT", "TLS_KEY",
             "TLS_CLIENT_CA", "MODEL_PUBLIC_KEY", "RATE_PER_SECOND", "RATE_BURST", "BODY_SECONDS"}
    return {name for name in names if f'"{name}"' in source}


def snapshot(folder):
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*")}


def test_the_server_writes_nothing_while_it_serves(tmp_path, model):
    """As close to readOnlyRootFilesystem as a test without a container gets: the server's code, the course
    package and the model copied to a folder, the server started from there with PYTHONDONTWRITEBYTECODE, HOME
    and TMPDIR pointing at empty folders; after start-up, requests (good and bad) and a stop, nothing in any of
    them changed. It does not prove the kernel would refuse a write (only a read-only mount does), nor watch
    paths outside these folders."""
    app = tmp_path / "app"
    shutil.copytree(LESSON, app / "lessons" / "10-security", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "course", app / "course", ignore=shutil.ignore_patterns("__pycache__"))
    (app / "models").mkdir()
    for path in (model.path, model.path.with_suffix(".json")):
        shutil.copy(path, app / "models" / path.name)
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), temp.mkdir()
    before = snapshot(app)
    # The copy's course package, not the repository's, is the one the server imports:
    where = subprocess.run([sys.executable, "-c", "import course; print(course.__file__)"], cwd=app, text=True,
                           env={**os.environ, "PYTHONPATH": str(app)}, capture_output=True, check=True).stdout
    assert where.strip() == str(app / "course" / "__init__.py")
    env = {"API_KEYS": K1, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(app), "HOME": str(home),
           "TMPDIR": str(temp), "MODEL_PATH": str(app / "models" / model.path.name), "DRAIN_SECONDS": "0"}
    with start_server(app / "lessons" / "10-security" / "app.py", env=env, cwd=app) as server:
        assert post(server.url, K1).status_code == 200
        assert post(server.url, K1, "/predict/batch", {"instances": [ROW] * 1000}).status_code == 200
        assert post(server.url, WRONG).status_code == 403
        assert post(server.url, K1, body={"sepal_length": "x"}).status_code == 422
    assert snapshot(app) == before
    assert list(home.iterdir()) == [] and list(temp.iterdir()) == []



# ---- the exercise's worked answer -------------------------------------------------------------------------------

def test_the_worked_answer_reloads_the_keys_file_while_serving(tmp_path):
    solution = import_lesson("solutions/10-security/reloading_keys.py")
    keys_file = tmp_path / "keys"
    stamp = [time.time_ns()]

    def write(text):  # a new modification time each time, however fast the writes
        keys_file.write_text(text)
        stamp[0] += 10**9
        os.utime(keys_file, ns=(stamp[0], stamp[0]))

    write(f"{K1}\n")
    keys = solution.ReloadingApiKeys({"API_KEYS_FILE": str(keys_file)}, every=0)
    assert keys.identify(K1) == security.fingerprint(K1) and keys.identify(K2) is None
    write(f"{K1}\n{K2}\n")  # a rotation begins: both keys
    assert keys.identify(K1) and keys.identify(K2)
    write(f"{K2}\n")  # and ends: the old key is refused, with no restart
    assert keys.identify(K1) is None and keys.identify(K2)
    write("")  # an emptied file keeps the last good keys
    assert keys.identify(K2) and keys.identify(K1) is None
    write("too-short\n")
    assert keys.identify(K2)
    write(f"{K2}\n")
    slow = solution.ReloadingApiKeys({"API_KEYS_FILE": str(keys_file)}, every=3600)
    write(f"{K1}\n")  # within `every`, the file is not looked at
    assert slow.identify(K2) and slow.identify(K1) is None


# ---- the servers are lessons 02 and 03, written out, plus security -------------------------------------------

def code(path):
    """A lesson file without its module docstring, as lines."""
    text = (LESSONS / path).read_text()
    return text[text.index('"""', 3) + 3:].splitlines()


@pytest.mark.parametrize("earlier, later, replaced", [
    ("02-fastapi/app.py", "10-security/app.py", [
        # imports that grow, the model loaded by load_signed_model, each route given the key, uvicorn's TLS options
        "from fastapi import FastAPI",
        "from course.errors import ERRORS, LimitBody, add_error_handlers",
        "from course.model import load_model",
        "    model = load_model()  # MODEL_PATH, or the repo's trained model",
        '@app.get("/model")',
        '@app.post("/predict", responses=ERRORS)',
        '@app.post("/predict/batch", responses=ERRORS)',
        "                            access_log=False)",
    ]),
    ("03-grpc/server.py", "10-security/grpc_server.py", [
        # the model loaded by load_signed_model, the interceptors and options, the port (TLS), JSON log lines
        "from course.model import load_model",
        "MODEL = load_model()  # MODEL_PATH, or the repo's trained model",
        "    server = grpc.aio.server(interceptors=[RefuseBadRequests()])",
        '    server.add_insecure_port(f"{host}:{port}")',
        "    print(f\"Serving {MODEL.metadata['name']} over gRPC on {host}:{port}\", flush=True)",
        '        print(f"{signum.name}: finishing in-flight calls, then stopping", flush=True)',
        '    print("Stopped", flush=True)',
    ]),
], ids=["rest", "grpc"])
def test_each_secured_server_is_the_earlier_lesson_plus_security(earlier, later, replaced):
    # An edit to lesson 02 or 03 that lesson 10 misses fails here, not in a learner's hands (as
    # tests/test_lesson_files.py does for lesson 06).
    before, after = code(earlier), code(later)
    assert [line for line in before if line not in after and line not in ENGINE_SWITCH] == replaced
    kept = [line for line in before if line in after and line.strip()]  # blank lines say nothing of order
    remaining = iter(after)
    assert all(line in remaining for line in kept), f"{later} has {earlier}'s lines in another order"
    assert "import_lesson" not in "\n".join(after), f"{later} is a complete file, not a patch"
    assert len(after) <= 205, f"{later} is {len(after)} lines long: a lesson server is read top to bottom"


def test_every_test_the_threat_tables_name_exists():
    # The README's and the notebook's threat tables point at the test that attacks each control: they must exist.
    defined = set()
    for path in (REPO / "tests").glob("test_security*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    for document in (LESSON / "README.md", LESSON / "notebook.ipynb"):
        table = document.read_text().split("threat table", 1)[1]
        named = set(re.findall(r"`(test_\w+)`", table))
        assert len(named) >= 15 and named <= defined, (document.name, sorted(named - defined))

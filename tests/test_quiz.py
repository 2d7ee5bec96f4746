import json

import pytest

from course.quiz import Quiz, encode_question


@pytest.fixture
def quiz(tmp_path):
    path = tmp_path / "quiz.json"
    path.write_text(json.dumps({
        "pick": encode_question("choice", "b", "Think of the wire format.", "gRPC sends protobuf.",
                                options=["a", "b", "c"]),
        "share": encode_question("number", 0.9111, "Look at the metadata.", "It is the held-out accuracy.",
                                 decimals=2),
    }))
    return Quiz(path)


def test_right_choice_reveals_the_explanation(quiz):
    feedback = quiz.grade("pick", " B ")
    assert feedback.status == "correct"
    assert feedback.message == "pick: correct! gRPC sends protobuf."


def test_wrong_choice_gives_the_hint_not_the_explanation(quiz):
    feedback = quiz.grade("pick", "a")
    assert feedback.status == "wrong"
    assert "Think of the wire format." in feedback.message
    assert "protobuf" not in feedback.message


@pytest.mark.parametrize("answer", [None, "", "   "])
def test_unanswered_says_so_without_raising(quiz, answer):
    assert quiz.grade("pick", answer).status == "unanswered"


def test_option_that_does_not_exist_is_named(quiz):
    feedback = quiz.grade("pick", "z")
    assert feedback.status == "invalid"
    assert "a, b, c" in feedback.message


@pytest.mark.parametrize("answer, status", [(0.91, "correct"), ("0.911", "correct"), (0.92, "wrong"),
                                            ("ninety", "invalid")])
def test_numeric_answers_are_compared_at_the_stated_precision(quiz, answer, status):
    assert quiz.grade("share", answer).status == status


def test_answers_and_explanations_are_not_in_plain_text(quiz):
    stored = quiz.path.read_text()
    assert "protobuf" not in stored and "held-out" not in stored
    assert "0.91" not in stored
    assert not any(key in question for question in json.loads(stored).values()
                   for key in ("answer", "correct", "solution"))


def test_check_prints_the_feedback(quiz, capsys):
    quiz.check("pick", "b")
    assert capsys.readouterr().out == "pick: correct! gRPC sends protobuf.\n"


def test_every_lesson_quiz_file_loads(repo):
    files = sorted(repo.glob("lessons/*/quiz.json"))
    assert files, "no lesson has a quiz"
    for path in files:
        questions = Quiz(path).questions
        assert len(questions) >= 3, f"{path} has fewer than 3 questions"

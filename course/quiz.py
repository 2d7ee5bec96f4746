"""Quiz cells with instant feedback, whose answers are not readable in the notebook.

Each lesson has a `quiz.json` holding, per question, a salted hash of the right answer, a hint,
and the explanation *encrypted with the right answer* — so the explanation, which gives the
answer away, only appears once you have found it. (This keeps honest learners honest; a
determined one can brute-force four options. It is a quiz, not a vault.)

In a notebook:

    from course.quiz import Quiz
    quiz = Quiz.for_lesson("00-why-serve")
    quiz.check("q1", answer)        # prints feedback; never raises on a wrong answer

Authors add a question with:

    .venv/bin/python -m course.quiz add lessons/00-why-serve/quiz.json q1 --choice b --options a,b,c,d \
        --hint "..." --explanation "..."
    .venv/bin/python -m course.quiz add lessons/00-why-serve/quiz.json q2 --number 0.97 --decimals 2 ...
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from course import LESSONS


def _normalise(question: dict, answer) -> str:
    if question["kind"] == "number":
        return f"{round(float(answer), question['decimals']):.{question['decimals']}f}"
    return str(answer).strip().lower()


def _digest(label: str, salt: str, normalised: str, counter: int = 0) -> bytes:
    return hashlib.sha256(f"{label}:{salt}:{normalised}:{counter}".encode()).digest()


def _keystream_xor(data: bytes, salt: str, normalised: str) -> bytes:
    blocks = (_digest("key", salt, normalised, i) for i in range(len(data) // 32 + 1))
    stream = b"".join(blocks)
    return bytes(a ^ b for a, b in zip(data, stream))


def encode_question(kind: str, answer, hint: str, explanation: str,
                    options: list[str] | None = None, decimals: int = 2) -> dict:
    question: dict = {"kind": kind, "salt": secrets.token_hex(8), "hint": hint}
    if kind == "choice":
        question["options"] = [o.strip().lower() for o in options or []]
    else:
        question["decimals"] = decimals
    normalised = _normalise(question, answer)
    if kind == "choice" and normalised not in question["options"]:
        raise ValueError(f"answer {answer!r} is not one of the options {question['options']}")
    question["answer_hash"] = _digest("check", question["salt"], normalised).hex()
    sealed = _keystream_xor(explanation.encode(), question["salt"], normalised)
    question["explanation"] = base64.b64encode(sealed).decode()
    return question


@dataclass(frozen=True)
class Feedback:
    status: str  # "correct", "wrong", "unanswered" or "invalid"
    message: str

    def __str__(self) -> str:
        return self.message


class Quiz:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.questions: dict[str, dict] = json.loads(self.path.read_text())

    @classmethod
    def for_lesson(cls, lesson: str) -> "Quiz":
        return cls(LESSONS / lesson / "quiz.json")

    def grade(self, question_id: str, answer) -> Feedback:
        question = self.questions[question_id]
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            how = "a letter" if question["kind"] == "choice" else "a number"
            return Feedback("unanswered", f"{question_id}: not answered yet. Set `answer` to {how} and run the cell again.")
        try:
            normalised = _normalise(question, answer)
        except (TypeError, ValueError):
            return Feedback("invalid", f"{question_id}: {answer!r} is not a number; the answer is a number "
                                       f"rounded to {question['decimals']} decimals.")
        if question["kind"] == "choice" and normalised not in question["options"]:
            return Feedback("invalid", f"{question_id}: {answer!r} is not one of the options "
                                       f"({', '.join(question['options'])}).")
        expected = bytes.fromhex(question["answer_hash"])
        if not hmac.compare_digest(_digest("check", question["salt"], normalised), expected):
            return Feedback("wrong", f"{question_id}: not quite — {answer!r} is not it. Hint: {question['hint']}")
        sealed = base64.b64decode(question["explanation"])
        explanation = _keystream_xor(sealed, question["salt"], normalised).decode()
        return Feedback("correct", f"{question_id}: correct! {explanation}")

    def check(self, question_id: str, answer) -> None:
        print(self.grade(question_id, answer))


def _main() -> None:
    parser = argparse.ArgumentParser(description="Add or replace a quiz question.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add")
    add.add_argument("file", type=Path)
    add.add_argument("question_id")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--choice")
    kind.add_argument("--number", type=float)
    add.add_argument("--options", default="a,b,c,d")
    add.add_argument("--decimals", type=int, default=2)
    add.add_argument("--hint", required=True)
    add.add_argument("--explanation", required=True)
    args = parser.parse_args()

    questions = json.loads(args.file.read_text()) if args.file.exists() else {}
    if args.choice is not None:
        entry = encode_question("choice", args.choice, args.hint, args.explanation, args.options.split(","))
    else:
        entry = encode_question("number", args.number, args.hint, args.explanation, decimals=args.decimals)
    questions[args.question_id] = entry
    args.file.write_text(json.dumps(questions, indent=2) + "\n")
    print(f"{args.file}: {args.question_id} saved ({len(questions)} questions)")


if __name__ == "__main__":
    _main()

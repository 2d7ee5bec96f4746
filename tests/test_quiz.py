"""The quiz: `course/quiz.py` itself, and every lesson's quiz as a learner meets it.

Why the right answers may be used here and nowhere a learner reads: a learner works in `lessons/` and opens
`solutions/` for a worked answer; both are notebooks written to be read, so neither may hold a quiz answer (a
worked answer that calls `quiz.check("q1", "b")` gives the quiz away to anyone who opens the exercise's answer).
`tests/` is for the course's authors and CI. To prove that every question can be answered at all (exactly one
option is right, and its explanation decrypts), a test must know the answer, and a learner who goes digging in
`tests/` could as well try all four options (`course/quiz.py` says as much: a quiz, not a vault). Even so, this file
holds no letters: it finds each right letter by grading every option, the way a stubborn learner would. It holds
only the numeric answers, which cannot be found by trying four options.

The recap's quiz (`lessons/recap/notebook.ipynb`) gets the same treatment: the quiz cells give a hint for a wrong
answer and the explanation for a right one, which is all the discussion a learner needs, so `solutions/` has no
list of its answers either.

The fairness test reads the question cells of every lesson notebook (the option texts, as a learner sees them) and
grades each option to find the right one, so that no one can pass it by writing the letters down: across the
course, the right option must not be the longest in more than a third of the questions, and each letter must be
right at least once every six questions.
"""

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from course import LESSONS, REPO
from course.quiz import Quiz, encode_question

LETTERS = "abcd"
# Answers that cannot be found by grading four options, (lesson, question): answer. Every question is a choice
# today; a number question added later needs its answer here, or the test below says so.
NUMBER_ANSWERS: dict[tuple[str, str], float] = {}


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


# ---- the lessons' quizzes, as the notebooks ask them ---------------------------------------------------------------

LABEL = re.compile(r"\*\*([a-z]+\d+)\.\*\*")  # **q1.** opens a question in a markdown cell
OPTION = re.compile(r"^\s*(?:[-*]\s+)?([a-z])\)\s+(\S.*)$")  # "a) ...", "* a) ..." or "- a) ..."
CHECK = re.compile(r"""\bquiz\.check\(\s*(?P<args>[^)]*)\)""")


@dataclass
class Question:
    notebook: Path  # the notebook that asks it
    lesson: str  # the lesson folder, whose quiz.json grades it
    id: str
    options: dict  # letter -> the option's text as a learner reads it (markdown's backticks removed)

    @property
    def where(self) -> str:
        return self.lesson if self.notebook.name == "notebook.ipynb" else f"{self.lesson}/{self.notebook.stem}"

    def right(self) -> str:
        quiz = Quiz(self.notebook.parent / "quiz.json")
        right = [letter for letter in self.options if quiz.grade(self.id, letter).status == "correct"]
        assert len(right) == 1, f"{self.where} {self.id}: {len(right)} right options ({right}), not exactly one"
        return right[0]

    def right_is_longest(self) -> bool:
        """True when no other option is longer than the right one (a tie counts as longest: still a tell)."""
        right = self.right()
        return all(len(self.options[right]) >= len(text) for text in self.options.values())

    def length_ratio(self) -> float:
        right = self.right()
        return len(self.options[right]) / max(len(t) for letter, t in self.options.items() if letter != right)


def cells(notebook: Path) -> list[dict]:
    return [{**cell, "source": "".join(cell["source"])} for cell in json.loads(notebook.read_text())["cells"]]


def parse_options(text: str) -> dict:
    options, current = {}, None
    for line in text.splitlines():
        option = OPTION.match(line)
        if option:
            current = option.group(1)
            options[current] = option.group(2).strip()
        elif current and line[:1].isspace() and line.strip():  # an option wrapped onto the next line
            options[current] += " " + line.strip()
        else:
            current = None
    return {letter: text.replace("`", "") for letter, text in options.items()}


def choice_questions(lessons: Path = LESSONS) -> list[Question]:
    """Every question that a lesson notebook asks with options, in course order."""
    found = []
    for notebook in sorted(lessons.glob("*/*.ipynb")):
        for cell in cells(notebook):
            if cell["cell_type"] != "markdown":
                continue
            labels = list(LABEL.finditer(cell["source"]))
            for label, following in zip(labels, labels[1:] + [None]):
                text = cell["source"][label.end():following.start() if following else None]
                options = parse_options(text)
                if options:
                    found.append(Question(notebook, notebook.parent.name, label.group(1), options))
    return found


def checks(notebook: Path) -> list[tuple[str, str, str]]:
    """(cell source, question id, the answer passed) for every quiz.check(...) in a notebook's code cells."""
    found = []
    for cell in cells(notebook):
        if cell["cell_type"] == "code":
            for call in CHECK.finditer(cell["source"]):
                first, _, rest = call.group("args").partition(",")
                found.append((cell["source"], first.strip().strip("'\""), rest.strip()))
    return found


QUIZ_FILES = sorted(LESSONS.glob("*/quiz.json"))
ALL_QUESTIONS = [(path.parent.name, question_id) for path in QUIZ_FILES for question_id in Quiz(path).questions]


@pytest.mark.parametrize("quiz_file", QUIZ_FILES, ids=lambda path: path.parent.name)
def test_the_notebooks_ask_exactly_the_questions_of_their_quiz_file(quiz_file):
    quiz = Quiz(quiz_file)
    notebooks = sorted(quiz_file.parent.glob("*.ipynb"))
    checked = Counter(question_id for notebook in notebooks for _, question_id, _ in checks(notebook))
    assert set(checked) == set(quiz.questions), f"checked in the notebooks: {sorted(checked)}"
    assert all(count == 1 for count in checked.values()), f"checked more than once: {checked}"
    asked = {q.id: q for q in choice_questions() if q.lesson == quiz_file.parent.name}
    for question_id, question in quiz.questions.items():
        if question["kind"] == "choice":
            assert question_id in asked, f"{question_id}: no markdown cell asks it with options (**{question_id}.**)"
            assert sorted(asked[question_id].options) == question["options"], f"{question_id}: options differ"
        else:
            assert question_id not in asked, f"{question_id} is a number question, but the notebook shows options"


@pytest.mark.parametrize("lesson, question_id", ALL_QUESTIONS, ids=[f"{l}-{q}" for l, q in ALL_QUESTIONS])
def test_every_question_has_one_right_answer_whose_explanation_decrypts(lesson, question_id):
    quiz = Quiz.for_lesson(lesson)
    question = quiz.questions[question_id]
    if question["kind"] == "choice":
        right = [option for option in question["options"] if quiz.grade(question_id, option).status == "correct"]
        assert len(right) == 1, f"{len(right)} right options: {right}"
        feedback = quiz.grade(question_id, right[0])
    else:
        assert (lesson, question_id) in NUMBER_ANSWERS, \
            f"{lesson} {question_id} is a number question: add its answer to NUMBER_ANSWERS in this file"
        feedback = quiz.grade(question_id, NUMBER_ANSWERS[lesson, question_id])
        assert feedback.status == "correct", feedback.message
    explanation = feedback.message.removeprefix(f"{question_id}: correct! ")
    assert len(explanation) >= 40 and explanation.isprintable(), f"explanation does not decrypt: {explanation!r}"
    assert explanation not in question["hint"] and question["hint"] not in explanation


@pytest.mark.parametrize("question", choice_questions(), ids=lambda q: f"{q.where}-{q.id}")
def test_a_hint_does_not_quote_the_right_option(question):
    hint = Quiz(question.notebook.parent / "quiz.json").questions[question.id]["hint"].replace("`", "").lower()
    assert question.options[question.right()].lower() not in hint


NOTEBOOKS = sorted(LESSONS.glob("*/*.ipynb")) + sorted((REPO / "solutions").glob("*/*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: str(path.relative_to(REPO)))
def test_no_notebook_holds_a_quiz_answer(notebook):
    """A quiz cell passes `answer`, which the learner sets, and starts it at None; a worked answer has no quiz."""
    if notebook.parts[-3] == "solutions":
        text = notebook.read_text()
        assert "course.quiz" not in text and "quiz.check" not in text, "a worked answer must not answer the quiz"
    for source, question_id, passed in checks(notebook):
        assert passed == "answer", f"quiz.check({question_id!r}, {passed}): pass `answer`, not the answer"
        assert re.search(r"^answer = None\b", source, re.M), f"{question_id}: the cell must start with answer = None"


def fairness_table(questions: list[Question]) -> str:
    by_place = defaultdict(list)
    for question in questions:
        by_place[question.where].append(question)
    lines = [f"{'lesson':22} {'questions':>9}   a  b  c  d   right is longest" + " " * 18 + "right/longest other (max)",
             "-" * 100]
    for place, group in [*by_place.items(), ("all", questions)]:
        letters = Counter(q.right() for q in group)
        longest = [q.id for q in group if q.right_is_longest()]
        share = f"{len(longest)} ({', '.join(longest)})" if place != "all" else f"{len(longest)} of {len(group)}"
        lines.append(f"{place:22} {len(group):>9}  " + " ".join(f"{letters[l]:>2}" for l in LETTERS)
                     + f"   {share:34}   {max(q.length_ratio() for q in group):.2f}")
    return "\n".join(lines)


def test_right_answers_are_spread_over_the_letters_and_not_the_longest():
    questions = choice_questions()
    total = len(questions)
    letters = Counter(question.right() for question in questions)
    longest = sum(question.right_is_longest() for question in questions)
    problems = [f"{letter} is right {letters[letter]} times (at least {total // 6}: one question in six)"
                for letter in LETTERS if letters[letter] < total // 6]
    if longest > total / 3:
        problems.append(f"the right option is the longest in {longest} of {total} questions (at most {total / 3:.1f})")
    print(fairness_table(questions))  # pytest -s shows it when the test passes, too
    assert not problems, "\n".join(problems) + "\n\n" + fairness_table(questions)

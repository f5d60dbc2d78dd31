"""Synthetic curriculum: seeded multi-step arithmetic word problems with exact answers.

``synthetic_problems(n, split, levels, seed)`` returns ``Problem``s whose ``meta`` holds ``level``,
``split`` and ``reference_steps``: a worked solution in the step format of ``rstar.steps`` (comment
lines with the reasoning, then Python; the last step binds ``answer``). These reference solutions
are the built-in teacher of the bootstrap round, so wording and step splits vary: several sentence
and comment templates per operation, different variable names, in-place updates or new names,
literals sometimes named, and adjacent operations sometimes merged into one step.

Levels (an "operation" is one arithmetic move of the story):
  1: 1-2 additions/subtractions on numbers up to 20;
  2: 2-3 operations, also multiplication, exact division, groups ("4 boxes of 6"), up to 50;
  3: 3-4 operations, also money and rate questions (price per item, how many days/boxes);
  4: 4-5 operations, also percentages and fractions ("a third of them"), one distractor number;
  5: 5-6 operations, decimal prices (answers like ``37.5``), 1-2 distractors;
  6: 6-7 operations, larger numbers, two distractors.
Answers are exact: integers, or terminating decimals at levels 5-6 (never repeating fractions).

Held-out split: a problem is held out when a fixed hash of its id (itself a hash of the question)
falls under ``HELDOUT_FRACTION``. The split does not depend on ``seed``, so the same question is
in the same split for every seed and run: train and held-out sets can never share a question.
Problems are unique within one call. Run ``python -m rstar.curriculum`` to print a few examples.
"""

from __future__ import annotations

import hashlib
import random
from decimal import Decimal
from fractions import Fraction

from rstar.schemas import Problem, problem_id

HELDOUT_FRACTION = 0.2
LEVELS = (1, 2, 3, 4, 5, 6)
SPLITS = ("train", "heldout")
# name, subject and object pronoun
NAMES = [
    ("Lena", "she", "her"),
    ("Omar", "he", "him"),
    ("Mia", "she", "her"),
    ("Jonas", "he", "him"),
    ("Priya", "she", "her"),
    ("Diego", "he", "him"),
    ("Aiko", "she", "her"),
    ("Kwame", "he", "him"),
    ("Sofia", "she", "her"),
    ("Tom", "he", "him"),
    ("Nora", "she", "her"),
    ("Ravi", "he", "him"),
]
FRIENDS = ["Ben", "Carla", "Ivan", "Zoe", "Malik", "Ines", "Hugo", "Yara"]
# singular, plural, container, containers
ITEMS = [
    ("apple", "apples", "basket", "baskets"),
    ("pencil", "pencils", "box", "boxes"),
    ("sticker", "stickers", "sheet", "sheets"),
    ("marble", "marbles", "bag", "bags"),
    ("cookie", "cookies", "tray", "trays"),
    ("egg", "eggs", "carton", "cartons"),
    ("shell", "shells", "jar", "jars"),
    ("card", "cards", "pack", "packs"),
    ("flower", "flowers", "vase", "vases"),
    ("toy car", "toy cars", "crate", "crates"),
]
_FRACTIONS = {
    (1, 2): "half",
    (1, 3): "a third",
    (2, 3): "two thirds",
    (1, 4): "a quarter",
    (3, 4): "three quarters",
    (1, 5): "a fifth",
    (2, 5): "two fifths",
}
# level: (operations, largest number, operation kinds, distractors)
_SPEC = {
    1: ((1, 2), 20, ("add", "sub"), (0, 0)),
    2: ((2, 3), 50, ("add", "sub", "mul", "div"), (0, 0)),
    3: ((3, 4), 100, ("add", "sub", "mul", "div"), (0, 0)),
    4: ((4, 5), 200, ("add", "sub", "mul", "div", "pct", "frac"), (1, 1)),
    5: ((5, 6), 500, ("add", "sub", "mul", "div", "pct", "frac"), (1, 2)),
    6: ((6, 7), 1000, ("add", "sub", "mul", "div", "pct", "frac"), (2, 2)),
}
_BOUND = 20_000

# Sentence templates as (sentence, reason); both are formatted with the story's words and k.
_T = {
    "add": [
        ("{P} buys {k} more {items}.", "{p} buys {k} more"),
        ("{f} gives {o} {k} {items}.", "{f} adds {k}"),
        ("Then {p} finds another {k} {items}.", "{k} more are found"),
        ("{P} receives {k} {items} as a gift.", "the gift adds {k}"),
    ],
    "sub": [
        ("{P} gives {k} {items} to {f}.", "{k} go to {f}"),
        ("{k} of the {items} get lost.", "{k} are lost"),
        ("{P} uses {k} of them for a school project.", "{k} are used up"),
        ("{P} sells {k} {items} at the market.", "{k} are sold"),
    ],
    "mul": [
        ("A week later {p} has {k} times as many {items} as before.", "there are now {k} times as many"),
        ("{P} manages to make the collection {k} times bigger.", "the collection grows {k}-fold"),
    ],
    "div": [
        (
            "{P} splits the {items} equally into {k} {conts} and keeps only one {cont}.",
            "one of {k} equal parts is kept",
        ),
        (
            "{P} shares them equally among {k} children, {self} included, and keeps one share.",
            "each of {k} people gets an equal share",
        ),
    ],
    "pct": [
        ("{P} sells {k}% of the {items}.", "{k}% are sold"),
        ("{k}% of the {items} are damaged and thrown away.", "{k}% are thrown away"),
    ],
    "frac": [
        ("{P} gives {fw} of the {items} to {f}.", "{fw} of them go to {f}"),
        ("{P} donates {fw} of them to a school.", "{fw} are donated"),
    ],
}
_COMMENT = {
    "add": ["# {R}, so add {k}.", "# Add {k}: {r}.", "# {R}; the count goes up by {k}."],
    "sub": ["# {R}, so subtract {k}.", "# Take away {k} because {r}.", "# {R}; {k} fewer remain."],
    "mul": ["# {R}: multiply by {k}.", "# Multiply by {k}, since {r}."],
    "div": ["# {R}: divide by {k}.", "# Divide by {k}, since {r}."],
    "pct": ["# {R}: work out {k}% of the amount and subtract it.", "# {k}% is {k}/100 of them; remove that part."],
    "frac": ["# {R}: find {fw} of the amount and subtract it.", "# {Fw} of them leave, so subtract that part."],
}
_NEW_VARS = {
    "add": ["after_adding", "total", "new_total", "{noun}_now"],
    "sub": ["remaining", "left", "{noun}_left", "after_removing"],
    "mul": ["grown", "multiplied", "{noun}_later"],
    "div": ["share", "one_part", "{noun}_kept"],
    "pct": ["after_percent", "kept", "{noun}_remaining"],
    "frac": ["rest", "kept_part", "{noun}_after"],
}
_LITERALS = {
    "add": ["extra", "added", "more"],
    "sub": ["removed", "taken", "minus"],
    "mul": ["factor", "times"],
    "div": ["parts", "groups"],
}
_DISTRACTORS = [
    "{f} has {k} {other}.",
    "{N}'s cousin is {k} years old.",
    "The market is {k} km from {N}'s home.",
    "{N}'s class has {k} students.",
]


class CurriculumError(ValueError):
    """Bad arguments (unknown level or split) or a request the generator cannot meet."""


def split_of(pid: str) -> str:
    """``train`` or ``heldout`` from a fixed hash of the problem id (same for every seed)."""
    h = int(hashlib.sha256(f"rstar-curriculum-split\n{pid}".encode()).hexdigest()[:8], 16)
    return "heldout" if h / 2**32 < HELDOUT_FRACTION else "train"


def format_exact(x: Fraction) -> str:
    """An exact answer string: ``42``, ``-3``, ``37.5`` (only terminating decimals are allowed)."""
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        raise CurriculumError(f"{x} has no exact decimal form")
    return format(Decimal(x.numerator) / Decimal(x.denominator), "f")


class _Story:
    """One problem under construction: the sentences, the value, and the reference code chunks."""

    def __init__(self, rng: random.Random, level: int):
        self.rng, self.level = rng, level
        self.ops, self.top, self.kinds, self.n_distract = _SPEC[level]
        name, subj, obj = rng.choice(NAMES)
        sing, plural, cont, conts = rng.choice(ITEMS)
        other = rng.choice([i for i in ITEMS if i[1] != plural])[1]
        self.words = dict(
            N=name,
            p=subj,
            P=subj.capitalize(),
            o=obj,
            self=f"{obj}self",
            f=rng.choice(FRIENDS),
            item=sing,
            items=plural,
            cont=cont,
            conts=conts,
            other=other,
        )
        self.noun = plural.replace(" ", "_")
        self.inplace = rng.random() < 0.4
        self.var = rng.choice([self.noun, "count", f"n_{self.noun}", f"num_{self.noun}"])
        self.used = {self.var}
        self.sentences: list[str] = []
        self.chunks: list[tuple[list[str], list[str]]] = []  # (comment lines, code lines) per move
        self.value = Fraction(0)
        self.removed = False  # some move took items away ("how many are left?" makes sense)
        self.last = ""  # the last sentence template, not to be used twice in a row

    def fmt(self, template: str, **extra) -> str:
        return template.format(**self.words, **extra)

    def unique(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``… if the solution already uses that name."""
        name, i = base, 2
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def fresh(self, kind: str) -> str:
        """The variable that receives the result of a move of ``kind``."""
        return self.var if self.inplace else self.unique(self.rng.choice(_NEW_VARS[kind]).format(noun=self.noun))

    def num(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, max(lo, hi))


def _start(s: _Story) -> int:
    """The opening sentence; returns the operations it used (a group or a sum is one)."""
    r, kind = s.rng, s.rng.choice(["one"] + (["group", "sum"] if s.level >= 2 else []))
    if kind == "one":
        a = s.num(2 if s.level == 1 else 5, s.top)
        s.sentences.append(
            s.fmt(
                r.choice(
                    [
                        "{N} has {a} {items}.",
                        "{N} starts the week with {a} {items}.",
                        "{N} owns {a} {items}.",
                        "There are {a} {items} in {N}'s room.",
                    ]
                ),
                a=a,
            )
        )
        s.chunks.append(
            (
                [s.fmt(r.choice(["# {N} starts with {a} {items}.", "# Start from the {a} {items}."]), a=a)],
                [f"{s.var} = {a}"],
            )
        )
        s.value = Fraction(a)
        return 0
    if kind == "group":
        a, b = s.num(2, 9), s.num(2, max(4, s.top // 8))
        s.sentences.append(
            s.fmt(
                r.choice(
                    [
                        "{N} has {a} {conts} with {b} {items} in each.",
                        "{N} buys {a} {conts} of {items}, and each {cont} holds {b}.",
                    ]
                ),
                a=a,
                b=b,
            )
        )
        comment = s.fmt(
            r.choice(
                [
                    "# {a} {conts} with {b} {items} each: multiply.",
                    "# Multiply the number of {conts} by the {items} in each {cont}.",
                ]
            ),
            a=a,
            b=b,
        )
        cont = s.words["conts"].replace(" ", "_")
        code = (
            [f"{s.var} = {a} * {b}"]
            if r.random() < 0.5
            else [f"{cont} = {a}", f"per_{s.words['cont']} = {b}", f"{s.var} = {cont} * per_{s.words['cont']}"]
        )
        s.value = Fraction(a * b)
    else:
        a, b = s.num(2, s.top), s.num(2, s.top)
        first, second, sentence = r.choice(
            [
                ("monday", "tuesday", "{N} collects {a} {items} on Monday and {b} on Tuesday."),
                ("small", "large", "{N} has {a} small {items} and {b} large {items}."),
            ]
        )
        s.sentences.append(s.fmt(sentence, a=a, b=b))
        comment = s.fmt(
            r.choice(["# Add the two amounts: {a} and {b}.", "# Altogether {N} has {a} + {b} {items}."]), a=a, b=b
        )
        code = (
            [f"{s.var} = {a} + {b}"]
            if r.random() < 0.5
            else [f"{first} = {a}", f"{second} = {b}", f"{s.var} = {first} + {second}"]
        )
        s.value = Fraction(a + b)
    s.chunks.append(([comment], code))
    return 1


def _operate(s: _Story, kind: str) -> bool:
    """Apply one operation of ``kind`` to the story, or return False if it does not fit the value."""
    r, v = s.rng, int(s.value)
    fw = None
    k: int | str  # the operand: a number, or "a/b" for a fraction
    if kind == "add":
        k = s.num(1, s.top)
        new = v + k
    elif kind == "sub":
        if v < 2:
            return False
        k = s.num(1, min(v - 1, s.top))
        new = v - k
    elif kind == "mul":
        k = r.randint(2, 3 if s.level < 4 else 5)
        new = v * k
        if new > _BOUND:
            return False
    elif kind == "div":
        ks = [k for k in range(2, 10) if v % k == 0 and v // k >= 2]
        if not ks:
            return False
        k = r.choice(ks)
        new = v // k
    elif kind == "pct":
        ks = [p for p in (5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80) if v * p % 100 == 0]
        if not ks:
            return False
        k = r.choice(ks)
        new = v - v * k // 100
    else:
        fracs = [f for f in _FRACTIONS if v % f[1] == 0]
        if not fracs:
            return False
        a, b = r.choice(fracs)
        k, fw = f"{a}/{b}", _FRACTIONS[(a, b)]
        new = v - v * a // b
    extra = dict(k=k, fw=fw, Fw=(fw or "").capitalize())
    sentence, reason = r.choice([t for t in _T[kind] if t[0] != s.last])
    s.last, s.removed = sentence, s.removed or kind in ("sub", "pct", "frac")
    reason = s.fmt(reason, **extra)
    comment = s.fmt(r.choice(_COMMENT[kind]), r=reason, R=reason[0].upper() + reason[1:], **extra)
    s.sentences.append(s.fmt(sentence, **extra))
    s.chunks.append(([comment], _code(s, kind, k)))
    s.value = Fraction(new)
    return True


def _code(s: _Story, kind: str, k) -> list[str]:
    r, var, lines = s.rng, s.var, []
    if kind in ("pct", "frac"):
        part = s.unique(r.choice(["part", "removed", "gone"]))
        target = s.fresh(kind)
        num, den = (k, 100) if kind == "pct" else map(int, k.split("/"))
        style = r.randrange(3)
        if style == 0:
            lines = [f"{part} = {var} * {num} / {den}", f"{target} = {var} - {part}"]
        elif style == 1:
            lines = [f"{target} = {var} * ({den} - {num}) / {den}"]
        else:
            lines = [f"{target} = {var} - {var} * {num} // {den}"]
    else:
        sym = {"add": "+", "sub": "-", "mul": "*", "div": r.choice(["/", "//"])}[kind]
        operand = str(k)
        if r.random() < 0.3:
            operand = s.unique(r.choice(_LITERALS[kind]))
            lines.append(f"{operand} = {k}")
        target = s.fresh(kind)
        lines.append(
            f"{var} {sym}= {operand}" if s.inplace and r.random() < 0.5 else f"{target} = {var} {sym} {operand}"
        )
    s.var = target
    return lines


def _finish(s: _Story, ending: str) -> Fraction:
    """The question sentence and the step that binds ``answer``; returns the exact answer."""
    r, var = s.rng, s.var
    if ending == "money":
        price = (
            Fraction(r.randint(2, 9))
            if s.level < 5
            else Fraction(r.choice(["0.25", "0.5", "0.75", "1.25", "1.5", "2.5", "0.2", "1.2"]))
        )
        shown = str(price.numerator) if price.denominator == 1 else f"{float(price):.2f}"
        s.sentences.append(
            s.fmt(
                r.choice(
                    [
                        "{P} then sells every one of the {items} for ${c}. How much money does {p} make?",
                        "Each {item} is worth ${c}. How many dollars are all of {N}'s {items} worth?",
                    ]
                ),
                c=shown,
            )
        )
        lit = str(price.numerator) if price.denominator == 1 else format_exact(price)
        code = [f"price = {lit}", f"answer = {var} * price"] if r.random() < 0.5 else [f"answer = {var} * {lit}"]
        s.chunks.append(([s.fmt("# Each {item} brings ${c}, so multiply by the price.", c=shown)], code))
        return s.value * price
    if ending == "rate":
        ks = [k for k in range(2, 13) if int(s.value) % k == 0 and int(s.value) // k >= 2]
        if ks:
            k = r.choice(ks)
            s.sentences.append(
                s.fmt(
                    r.choice(
                        [
                            "If {p} uses {k} {items} a day, for how many days will they last?",
                            "{P} packs them into {conts} of {k}. How many {conts} does {p} fill?",
                        ]
                    ),
                    k=k,
                )
            )
            s.chunks.append(
                (
                    [s.fmt("# Divide by the {k} per group to count the groups.", k=k)],
                    [f"answer = {var} {r.choice(['/', '//'])} {k}"],
                )
            )
            return s.value / k
    questions = [
        "How many {items} does {N} have now?",
        "How many {items} does {p} end up with?",
        "What is the total number of {items} {N} has at the end?",
    ]
    if s.removed:
        questions += ["How many {items} are left?", "How many {items} remain in the end?"]
    s.sentences.append(s.fmt(r.choice(questions)))
    last_comments, last_code = s.chunks[-1]
    if r.random() < 0.5 and last_code[-1].startswith(f"{var} = "):
        last_code[-1] = "answer" + last_code[-1][len(var) :]  # the last move binds the answer itself
    else:
        s.chunks.append(
            (
                [
                    s.fmt(
                        r.choice(
                            [
                                "# The number of {items} {N} has is the answer.",
                                "# That count answers the question.",
                                "# {N} ends with this many {items}.",
                            ]
                        )
                    )
                ],
                [f"answer = {var}"],
            )
        )
    return s.value


def _generate(rng: random.Random, level: int) -> tuple[str, list[str], str]:
    s = _Story(rng, level)
    target = rng.randint(*s.ops)
    ending = rng.choice(["count", "money", "rate"]) if level >= 3 else "count"
    done = _start(s)
    while done < target - (ending != "count"):
        # a kind that does not fit the value (no divisor, nothing to take away) is drawn again
        if any(_operate(s, rng.choice(s.kinds)) for _ in range(8)) or _operate(s, "add"):
            done += 1
    answer = _finish(s, ending)
    for _ in range(rng.randint(*s.n_distract)):  # numbers that the question does not need
        at = rng.randint(1, len(s.sentences) - 1)
        k = rng.randint(2, 60)
        s.sentences.insert(at, s.fmt(rng.choice(_DISTRACTORS), k=k))
        if rng.random() < 0.5:
            s.chunks[min(at, len(s.chunks) - 1)][0].insert(0, f"# The {k} in the story is not needed.")
    steps: list[str] = []
    for comments, code in s.chunks:
        text = "\n".join(comments + code) + "\n"
        if steps and rng.random() < 0.3:
            steps[-1] += text  # two moves in one step
        else:
            steps.append(text)
    return " ".join(s.sentences), steps, format_exact(answer)


def synthetic_problems(
    n: int, split: str = "train", levels: tuple[int, ...] = (1, 2, 3), seed: int = 0
) -> list[Problem]:
    """``n`` distinct problems of ``split`` (``train`` or ``heldout``), levels taken in turn."""
    if split not in SPLITS:
        raise CurriculumError(f"unknown split {split!r}: use one of {SPLITS}")
    if not levels or any(level not in _SPEC for level in levels):
        raise CurriculumError(f"levels must be a non-empty subset of {LEVELS}, got {levels!r}")
    rng, seen = random.Random(seed), set()
    out: list[Problem] = []
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        level = levels[len(out) % len(levels)]
        question, steps, answer = _generate(rng, level)
        pid = problem_id("synthetic", question)
        if pid not in seen and split_of(pid) == split:
            seen.add(pid)
            out.append(
                Problem(
                    id=pid,
                    source="synthetic",
                    question=question,
                    answer=answer,
                    meta={"level": level, "split": split, "reference_steps": steps},
                )
            )
    if len(out) == n:
        return out
    raise CurriculumError(f"could not make {n} distinct {split} problems at levels {levels}")


if __name__ == "__main__":
    from rstar.steps import render_steps

    for p in synthetic_problems(6, levels=LEVELS, seed=1):
        print(f"[level {p.meta['level']}] {p.question}\n{render_steps(p.meta['reference_steps'])}=> {p.answer}\n")

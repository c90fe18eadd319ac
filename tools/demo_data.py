"""Synthetic chats for the demo model: pictures of shapes plus short questions with fixed answers.

Everything is a function of an integer seed (``numpy.random.default_rng(seed)``), so a sample can
be regenerated anywhere. Training uses seeds below ``EVAL_SEED_BASE``; evaluation and tests draw
theirs at or above it, so they always see pictures the model was never trained on.

Question kinds (each answer is one fixed phrasing, so an answer is right or wrong as a string):

- ``describe``  "What is in the image?"        -> "A red circle and a blue star."
- ``colour``    "What colour is the circle?"   -> "The circle is red."
- ``shape``     "What shape is the red one?"   -> "The red one is a circle."
- ``position``  "Where is the square?"         -> "Top left." / "In the centre."
- ``count``     "How many shapes are there?"   -> "Two shapes."
- ``absent``    "Where is the star?" (none)    -> "There is no star."
- ``two_image`` "Which image has the red circle?" (two pictures) -> "The second image."
- ``text``      "hello", "what can you do?", a picture question without a picture, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tools.demo_scenes import COLOURS, REGIONS, SHAPES, Scene, render, sample_scene

EVAL_SEED_BASE = 1_000_000_000
IMAGE_KINDS = ("describe", "colour", "shape", "position", "count", "absent")
KINDS = (*IMAGE_KINDS, "two_image", "text")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a helpful assistant that looks at pictures.")
# How often training asks each kind: the harder ones (binding a colour to a kind, left and right)
# more, the ones learnt early less.
TRAIN_WEIGHTS = {"describe": 1.0, "colour": 1.5, "shape": 1.0, "position": 2.0, "count": 0.5, "absent": 0.75}
NUMBER = {1: "One shape", 2: "Two shapes"}
ORDINAL = ("first", "second")

TEXT_CHAT: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("hello", "Hello!", "hi", "Hi there!", "hey", "Good morning!", "Hello, how are you?"),
        "Hello! Send me a picture of shapes and ask me about it.",
    ),
    (
        ("what can you do?", "What can you do?", "Who are you?", "What are you?", "help", "Help me."),
        "I am a tiny demo model. I can tell you which shapes are in a picture, their colours and where they are.",
    ),
    (("thanks", "Thank you!", "thank you", "Thanks a lot."), "You are welcome!"),
    (("bye", "Goodbye!", "See you later."), "Goodbye!"),
    (
        ("What is the capital of France?", "Tell me a joke.", "What time is it?", "Write a poem."),
        "Sorry, I only know about shapes and colours in pictures.",
    ),
)
NO_IMAGE_ANSWER = "I cannot see a picture. Please send me one."


@dataclass
class Turn:
    question: str
    answer: str
    kind: str
    images: int = 0  # pictures attached to this user turn (only the first turn has any)


@dataclass
class Chat:
    """One conversation: its pictures (and their scenes), an optional system prompt and turns."""

    turns: list[Turn]
    images: list[Image.Image] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    system: str | None = None
    image_first: bool = True  # picture before the question text in the user message

    def messages(self, upto: int | None = None, with_answer: bool = True) -> list[dict[str, Any]]:
        """OpenAI-style messages of turns [0, upto); the last answer left out unless ``with_answer``."""
        upto = len(self.turns) if upto is None else upto
        msgs: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        for i, turn in enumerate(self.turns[:upto]):
            if turn.images:
                parts: list[dict[str, Any]] = [{"type": "image"}] * turn.images
                text = [{"type": "text", "text": turn.question}]
                content: Any = parts + text if self.image_first else text + parts
            else:
                content = turn.question
            msgs.append({"role": "user", "content": content})
            if with_answer or i < upto - 1:
                msgs.append({"role": "assistant", "content": turn.answer})
        return msgs


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _a(noun_phrase: str) -> str:
    return f"{'an' if noun_phrase[0] in 'aeiou' else 'a'} {noun_phrase}"


def _train_kind(rng: np.random.Generator) -> str:
    weights = np.array([TRAIN_WEIGHTS[k] for k in IMAGE_KINDS])
    return IMAGE_KINDS[int(rng.choice(len(IMAGE_KINDS), p=weights / weights.sum()))]


def _listing(scene: Scene) -> str:
    """ "An orange star and a blue square." (shapes in region order)."""
    text = " and ".join(_a(f"{s.colour} {s.kind}") for s in scene.shapes)
    return f"{text[0].upper()}{text[1:]}."


def _where(region: str) -> str:
    return "In the centre." if region == "centre" else f"{region.capitalize()}."


def image_question(kind: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A question of ``kind`` about one picture and its answer."""
    shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if kind == "describe":
        q = ("What is in the image?", "What do you see?", "Describe the image.", "What is in this picture?")
        return _pick(rng, q), _listing(scene)
    if kind == "colour":
        q = ("What colour is the {}?", "What color is the {}?", "Which colour is the {}?")
        return _pick(rng, q).format(shape.kind), f"The {shape.kind} is {shape.colour}."
    if kind == "shape":
        if len(scene.shapes) == 1 and rng.random() < 0.5:
            return _pick(rng, ("What shape is it?", "What shape is in the image?")), f"It is a {shape.kind}."
        return f"What shape is the {shape.colour} one?", f"The {shape.colour} one is a {shape.kind}."
    if kind == "position":
        q = _pick(rng, (f"Where is the {shape.kind}?", f"Where is the {shape.colour} {shape.kind}?"))
        return q, _where(shape.region)
    if kind == "count":
        q = ("How many shapes are there?", "How many shapes are in the image?", "How many shapes do you see?")
        return _pick(rng, q), f"{NUMBER[len(scene.shapes)]}."
    if kind == "absent":
        missing = _pick(rng, [k for k in SHAPES if scene.find(k) is None])
        q = ("Where is the {}?", "What colour is the {}?")
        return _pick(rng, q).format(missing), f"There is no {missing}."
    raise ValueError(f"unknown question kind {kind!r}")


def text_turn(rng: np.random.Generator) -> Turn:
    if rng.random() < 0.2:  # a picture question, but no picture was sent
        return Turn(
            image_question(_pick(rng, IMAGE_KINDS[:5]), sample_scene(rng), rng)[0], NO_IMAGE_ANSWER, "text"
        )
    questions, answer = TEXT_CHAT[int(rng.integers(len(TEXT_CHAT)))]
    return Turn(_pick(rng, questions), answer, "text")


def two_image_turn(scenes: list[Scene], rng: np.random.Generator) -> Turn:
    target = int(rng.integers(2))
    s = scenes[target].shapes[0]
    if rng.random() < 0.7:
        return Turn(
            f"Which image has the {s.colour} {s.kind}?", f"The {ORDINAL[target]} image.", "two_image", 2
        )
    return Turn(f"What is in the {ORDINAL[target]} image?", _listing(scenes[target]), "two_image", 2)


def _two_scenes(rng: np.random.Generator) -> list[Scene]:
    """Two one-shape pictures; the other picture shares the colour or the kind half of the time."""
    first = sample_scene(rng, num_shapes=1, max_side=320)
    while True:
        second = sample_scene(rng, num_shapes=1, max_side=320)
        a, b = first.shapes[0], second.shapes[0]
        if (a.kind, a.colour) != (b.kind, b.colour) and (
            rng.random() < 0.5 or a.kind == b.kind or a.colour == b.colour
        ):
            return [first, second]


def make_chat(seed: int, kind: str | None = None, turns: int = 1, num_shapes: int | None = None) -> Chat:
    """A chat whose first turn is a question of ``kind`` (default: random) and ``turns - 1`` more
    text-only questions about the same picture(s) of ``num_shapes`` (default: 1 or 2) shapes."""
    rng = np.random.default_rng(seed)
    kind = kind or _pick(rng, KINDS)
    system = _pick(rng, SYSTEM_PROMPTS) if rng.random() < 0.2 else None
    image_first = bool(rng.random() < 0.7)
    if kind == "text":
        return Chat([text_turn(rng) for _ in range(turns)], system=system)
    if kind == "two_image":
        scenes = _two_scenes(rng)
        chat_turns = [two_image_turn(scenes, rng) for _ in range(turns)]
    else:
        scenes = [sample_scene(rng, num_shapes)]
        kinds = [kind] + [_train_kind(rng) for _ in range(turns - 1)]
        chat_turns = [Turn(*image_question(k, scenes[0], rng), k) for k in kinds]
    chat_turns[0].images = len(scenes)
    for t in chat_turns[1:]:
        t.images = 0
    images = [render(s, seed * 2 + i) for i, s in enumerate(scenes)]
    return Chat(chat_turns, images, scenes, system, image_first)


def training_chat(seed: int) -> Chat:
    """The training mix: mostly one picture with 1-4 questions, some two-picture and text chats;
    now and then a greeting comes before the picture. Two shapes more often than one (binding a
    colour or a position to the right shape is what takes longest to learn)."""
    rng = np.random.default_rng(seed ^ 0x5EED)
    r = rng.random()
    kind = "text" if r < 0.08 else "two_image" if r < 0.2 else _train_kind(rng)
    turns = int(rng.integers(1, 5)) if kind != "two_image" else int(rng.integers(1, 3))
    chat = make_chat(seed, kind, turns, num_shapes=2 if rng.random() < 0.65 else 1)
    if kind not in ("text",) and rng.random() < 0.1:
        chat.turns.insert(0, text_turn(rng))
    return chat


def training_group(seed: int, size: int) -> list[Chat]:
    """``size`` chats about the same picture(s): ``training_chat(seed)`` and single-turn questions
    of random kinds. In training they share one pass of the vision tower, which costs more than
    the language model's pass over the image tokens."""
    first = training_chat(seed)
    group = [first]
    if not first.images:
        return group
    rng = np.random.default_rng(seed ^ 0xC0FFEE)
    for _ in range(size - 1):
        if len(first.scenes) == 2:
            turn = two_image_turn(first.scenes, rng)
        else:
            kind = _train_kind(rng)
            turn = Turn(*image_question(kind, first.scenes[0], rng), kind, 1)
        system = _pick(rng, SYSTEM_PROMPTS) if rng.random() < 0.1 else None
        group.append(Chat([turn], first.images, first.scenes, system, bool(rng.random() < 0.7)))
    return group


def corpus(num_chats: int = 4000) -> list[str]:
    """Text the tokenizer is trained on: every fixed phrase once (so that each word the model says
    is in it), then the turns of many chats as the chat template frames them (role + newline)."""
    lines = [*SYSTEM_PROMPTS, NO_IMAGE_ANSWER]
    lines += [q for qs, a in TEXT_CHAT for q in (*qs, a)]
    lines += [f"Which image has the {c} {k}?" for c in COLOURS for k in SHAPES] + [_where(r) for r in REGIONS]
    lines += [f"{q} {o} image{p}" for o in ORDINAL for q, p in (("The", "."), ("What is in the", "?"))]
    for seed in range(num_chats):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng)
        for kind in IMAGE_KINDS:
            question, answer = image_question(kind, scene, rng)
            lines += [f"user\n{question}", f"assistant\n{answer}"]
    return [line + "\n" for line in lines]

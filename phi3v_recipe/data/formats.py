"""Row formats: how a source row becomes a conversation (typed messages) and the reference answers of its last turn.

- ``template``: one image column; the question is the recipe's ``question`` (or a per-row question column); the
  answer is ``answer_template`` filled from the row's columns (the Burberry task).
- ``qa``: ``question_column`` and ``answer_column`` (one answer, or a list: the first is trained, all are scored).
- ``messages``: TRL's conversational format, ``messages`` (user / assistant / system turns, string or typed content)
  with an ``images`` column. String content may carry ``<|image_N|>`` tags where the images go; without any image
  marker the images go before the first user turn's text (as TRL does).
- ``conversations``: LLaVA / ShareGPT (``from``: human / gpt / system, ``value`` with ``<image>`` markers) with an
  ``image`` or ``images`` column; or the Phi-3 cookbook's turns (``user``, ``assistant`` and each turn's ``images``).
- ``texts``: the_cauldron (``texts``: a list of ``user`` / ``assistant`` pairs, the ``images`` before the first turn).
"""

from ..answers import format_number
from ..arguments import DEFAULT_ANSWER_TEMPLATE, FORMATS, template_fields
from ..conversation import assistant_turn, count_images, image_item, text_item, text_of, user_turn
from ..errors import UserError
from ..phi3_v.processing_phi3_v import IMAGE_TAG
from .checks import BadRow

IMAGE_COLUMNS = ("images", "image", "local_image_path", "image_path", "img")
VIDEO_COLUMNS = ("video", "frames", "video_path")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def format_answer(row: dict, args) -> str:
    values = {}
    for name in template_fields(args.answer_template):
        value = row.get(name)
        if value is None or str(value).strip() == "":
            raise BadRow(f"empty {name}")
        if name in args.numeric_fields:
            try:
                value = format_number(value)
            except ValueError:
                raise BadRow(f"non-numeric {name}", repr(value)) from None
        values[name] = str(value).strip()
    return args.answer_template.format(**values)


def detect_format(columns: list[str], args) -> str:
    """The row format named in the recipe, or the one the columns show; a clear error when they show none."""
    if args.data_format != "auto":
        return args.data_format
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "conversations"
    if "texts" in columns:
        return "texts"
    if args.answer_column:
        return "qa"
    if all(name in columns for name in template_fields(args.answer_template)):
        return "template"
    if "question" in columns and ("answers" in columns or "answer" in columns):
        return "qa"
    fields = template_fields(args.answer_template)
    if args.answer_template != DEFAULT_ANSWER_TEMPLATE or any(name in columns for name in fields):
        return "template"  # the recipe means the template format: its missing columns are named next
    raise UserError(
        f"Cannot tell the format of dataset={args.dataset!r} from its columns {columns}. Accepted: 'messages' + "
        "'images' (TRL), 'conversations' + 'image'/'images' (LLaVA / ShareGPT, or the Phi-3 cookbook's turns), "
        "'texts' + 'images' (the_cauldron), a question and an answer column (set question_column and answer_column), "
        f"or the columns named in answer_template {args.answer_template!r}. Set data_format to one of {', '.join(FORMATS)}."
    )


def qa_columns(columns: list[str], args) -> tuple[str, str]:
    """(question column, answer column) of the qa format: the recipe's, else `question` and `answers` / `answer`."""
    answer = args.answer_column or ("answers" if "answers" in columns else "answer")
    return args.question_column or "question", answer


def required_columns(fmt: str, args) -> list[str]:
    """The columns a format reads (checked once, up front, against the source's columns)."""
    return {
        "template": template_fields(args.answer_template) + ([args.question_column] if args.question_column else []),
        "qa": [args.question_column, args.answer_column],
        "messages": ["messages"],
        "conversations": ["conversations"],
        "texts": ["texts"],
    }[fmt]


def image_column(fmt: str, columns: list[str], args) -> tuple[str | None, bool]:
    """(the column holding a row's images, whether it is a video: one video file or a list of frames)."""
    if args.video_column:
        return args.video_column, True
    if args.image_column:
        return args.image_column, False
    if fmt == "conversations" and "image" not in columns and "images" not in columns:
        return None, False  # the cookbook's turns carry their own images
    found = next((name for name in IMAGE_COLUMNS if name in columns), None)
    if found is not None:
        return found, False
    video = next((name for name in VIDEO_COLUMNS if name in columns), None)
    if video is not None:
        return video, True
    if args.image_url_column:
        return None, False
    raise UserError(
        f"dataset={args.dataset!r} has no image column: looked for {list(IMAGE_COLUMNS + VIDEO_COLUMNS)} in "
        f"{columns}. Set image_column (or video_column, or image_url_column)."
    )


def turn_images(row: dict) -> list:
    """The images the Phi-3 cookbook's turns name, in order (an empty list for other formats)."""
    turns = row.get("conversations") or []
    return [image for turn in turns if isinstance(turn, dict) for image in turn.get("images") or []]


def to_conversation(row: dict, fmt: str, args, num_images: int) -> tuple[list[dict], list[str]]:
    """(messages, reference answers of the last assistant turn) of one row."""
    if fmt == "template":
        question = (row.get(args.question_column) if args.question_column else row.get("question")) or args.question
        answer = format_answer(row, args)
        return [user_turn(str(question), num_images), assistant_turn(answer)], [answer]
    if fmt == "qa":
        question, answers = row.get(args.question_column), row.get(args.answer_column)
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers or [] if a is not None]
        if not question or not str(question).strip():
            raise BadRow("empty question")
        if not answers or not answers[0].strip():
            raise BadRow("empty assistant turn", "no answer")
        return [user_turn(str(question), num_images), assistant_turn(answers[0].strip())], [a.strip() for a in answers]
    if fmt == "messages":
        messages = normalize_messages(row.get("messages") or [], num_images)
    elif fmt == "conversations":
        messages = _conversations(row.get("conversations") or [], num_images)
    else:
        pairs = [(turn.get("user"), turn.get("assistant")) for turn in row.get("texts") or []]
        messages = _pairs(pairs, num_images)
    answers = [text_of(message) for message in messages if message["role"] == "assistant"][-1:]
    return messages, answers


def _split_tags(text: str) -> list[dict]:
    """``"<|image_1|>\\nWhat?"`` -> an image item, then the text (the newline after a tag belongs to the tag)."""
    items, last = [], 0
    for match in IMAGE_TAG.finditer(text):
        if text[last : match.start()]:
            items.append(text_item(text[last : match.start()]))
        items.append(image_item())
        last = match.end() + (text[match.end() : match.end() + 1] == "\n")
    if text[last:]:
        items.append(text_item(text[last:]))
    return items


def _with_images_first(messages: list[dict], num_images: int) -> list[dict]:
    """Without any image marker, the images go before the first user turn's text (as TRL and the cookbook do)."""
    if num_images and not count_images(messages):
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is not None:
            messages[first]["content"] = [image_item() for _ in range(num_images)] + messages[first]["content"]
    return messages


def normalize_messages(raw: list[dict], num_images: int) -> list[dict]:
    """TRL-style messages (string content with optional ``<|image_N|>`` tags, or typed items) as typed messages."""
    messages = []
    for message in raw:
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise BadRow("unknown role", repr(role))
        if isinstance(content, str) or content is None:
            items = _split_tags(content or "")
        else:
            items = []
            for item in content:
                if item.get("type") == "image":
                    items.append(image_item())
                elif item.get("type") == "text":
                    items.append(text_item(item.get("text") or ""))
                else:
                    raise BadRow("unsupported content", f"{item.get('type')!r} item (text and image items only)")
        messages.append({"role": role, "content": items})
    return _with_images_first(messages, num_images)


def _conversations(raw: list[dict], num_images: int) -> list[dict]:
    if raw and "user" in raw[0]:  # the Phi-3 cookbook's turns: each turn's images before its question
        messages = []
        for turn in raw:
            content = [image_item() for _ in turn.get("images") or []] + [text_item(turn.get("user") or "")]
            messages += [{"role": "user", "content": content}, assistant_turn(turn.get("assistant") or "")]
        return messages
    messages = []
    for turn in raw:
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise BadRow("unknown role", repr(turn.get("from")))
        items, text = [], turn.get("value") or ""
        pieces = text.split("<image>")
        for i, piece in enumerate(pieces):
            if i > 0:
                items.append(image_item())
                piece = piece[1:] if piece.startswith("\n") else piece
            if piece:
                items.append(text_item(piece))
        messages.append({"role": role, "content": items})
    return _with_images_first(messages, num_images)


def _pairs(pairs: list[tuple], num_images: int) -> list[dict]:
    messages = []
    for question, answer in pairs:
        messages += [user_turn(str(question or "")), assistant_turn(str(answer or ""))]
    return _with_images_first(messages, num_images)

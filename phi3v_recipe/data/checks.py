"""Row checks: what makes a row impossible to train on, said as a reason that is counted (or raised with `strict`)."""

from pathlib import Path

from PIL import Image

from ..conversation import count_images
from ..errors import UserError
from ..images import upright_size
from ..phi3_v.processing_phi3_v import IMAGE_TAG


class BadRow(UserError):
    """A row that cannot be trained on: ``kind`` is the reason counted in summaries, ``detail`` the specifics."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def check_image(path: str, max_pixels: int) -> tuple[int, int]:
    """Check an image file without decoding its pixels where the format allows; return its upright (width, height).
    Raises BadRow with the reason.

    A PNG is verified chunk by chunk (every CRC: a truncated or corrupt file fails); a JPEG is read to its header and
    its last two bytes must be the end-of-image marker, else it is decoded in full (a truncated file fails there, one
    with trailing bytes after the marker passes); any other format is decoded in full. Decoding a photo costs ~200x
    reading its header, and the collator decodes it again at every epoch."""
    file = Path(path)
    if not file.is_file():
        raise BadRow("missing image file", path)
    if file.stat().st_size == 0:
        raise BadRow("empty (0-byte) image file", path)
    try:
        with Image.open(file) as image:
            if image.width * image.height > max_pixels:
                raise BadRow(
                    "image over max_image_pixels", f"{path} is {image.width}x{image.height} > {max_pixels} pixels"
                )
            if image.format == "PNG":
                image.verify()  # which leaves the image unusable: its orientation is read from a fresh open below
            else:
                if image.format != "JPEG" or not _ends_with_jpeg_marker(file):
                    image.load()
                return upright_size(image)  # as the collator will see it, so that the token count is right
        with Image.open(file) as image:
            return upright_size(image)
    except BadRow:
        raise
    except Exception as err:
        raise BadRow("unreadable image", f"{path} ({type(err).__name__}: {err})") from None


def _ends_with_jpeg_marker(file: Path) -> bool:
    with file.open("rb") as f:
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"


def control_tokens(tokenizer) -> list[str]:
    """Every special and added token of the tokenizer (``<|end|>``, ``<|endoftext|>``, ``<s>``, ...), longest first."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values()}
    tokens |= {token for token in tokenizer.all_special_tokens if token}
    return sorted(tokens, key=len, reverse=True)


def check_conversation(messages: list[dict], num_images: int, tokens: list[str]) -> None:
    """Per turn: text that would be read as control tokens or image tags, empty assistant turns, and images that do
    not match the image items. Raises BadRow naming the turn."""
    if not any(message["role"] == "assistant" for message in messages):
        raise BadRow("no assistant turn", "nothing to train on")
    for turn, message in enumerate(messages, start=1):
        texts = [item["text"] or "" for item in message["content"] if item["type"] == "text"]
        for text in texts:
            if IMAGE_TAG.search(text):
                raise BadRow("malformed placeholders", f"turn {turn} ({message['role']}) holds an <|image_N|> tag")
            found = next((token for token in tokens if token in text), None)
            if found is not None:
                raise BadRow(
                    "control token in text",
                    f"turn {turn} ({message['role']}) holds {found!r}, which the tokenizer reads as a control token",
                )
        if message["role"] == "assistant" and not "".join(texts).strip():
            raise BadRow("empty assistant turn", f"turn {turn}")
        if message["role"] == "assistant" and any(item["type"] == "image" for item in message["content"]):
            raise BadRow("image in an assistant turn", f"turn {turn}: images belong to user turns")
    markers = count_images(messages)
    if markers != num_images:
        raise BadRow("image count does not match the markers", f"{markers} image markers, {num_images} images")

"""Shared checks of text inputs: a file (not a folder), not empty, text (not binary), its encoding known."""

from __future__ import annotations

from pathlib import Path

_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def check_is_file(path: Path, what: str) -> None:
    """Raise when ``path`` is missing, a folder or an empty file."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}.")
    if path.is_dir():
        raise ValueError(f"{what} must be a file, got the folder {str(path)!r}. Pass the path of the file inside it.")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{what} {str(path)!r} is empty (0 bytes): the download or copy did not complete. "
            "Copy the file again from its source."
        )


def decode_text(buf: bytes, name: str, what: str) -> tuple[str, str]:
    """Decode the bytes of a text export; return (text, encoding).

    Rule: a byte-order mark decides (UTF-8 or UTF-16, as Excel's "Unicode text" writes); without one the file must
    be UTF-8. NUL bytes without a UTF-16 mark mean a binary file (or UTF-16 without its mark) and are refused, as
    are bytes that are not UTF-8 (the error names the offset), rather than being replaced silently.
    """
    if not buf.strip():
        raise ValueError(f"{what} {name!r} holds no text (only whitespace or nothing).")
    for bom, enc in _BOMS:
        if buf.startswith(bom):
            try:
                return buf.decode(enc), enc
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{what} {name!r} starts with a {enc} byte-order mark but is not valid {enc} "
                    f"(byte {e.start}): the file is damaged. Export it again."
                ) from None
    if b"\x00" in buf[:65536]:
        raise ValueError(
            f"{what} {name!r} is not a text file: it holds NUL bytes (a binary file, e.g. a spreadsheet or an "
            "archive renamed, or UTF-16 text without its byte-order mark). Export it as UTF-8 CSV/TSV text."
        )
    try:
        return buf.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {name!r} is not UTF-8 text: byte {e.start} ({buf[e.start : e.start + 1]!r}) is not valid UTF-8 "
            "(perhaps a Latin-1/Windows-1252 export). Save it as UTF-8 and read it again."
        ) from None

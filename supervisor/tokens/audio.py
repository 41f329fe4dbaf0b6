"""Audio duration from a file's first bytes, without decoding the audio.

Routing a 150 MB upload must cost milliseconds, so only the head of the file is
read: WAV exactly from its RIFF header; MP3, FLAC, OGG and M4A through mutagen's
header parsers, with the total size filling in what a header alone does not
say. A file that cannot be read gives None (and a log line), never an error.
"""

from __future__ import annotations

import io
import logging
import struct

import mutagen
from mutagen.mp3 import MP3
from mutagen.ogg import OggFileType

log = logging.getLogger(__name__)

HEAD_BYTES = 256 << 10  # enough for WAV/FLAC/MP3 headers and most M4A moov-first files


def duration_seconds(head: bytes, total_size: int | None = None) -> float | None:
    """Seconds of audio in a file whose first bytes are `head` and whole size `total_size`."""
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _wav(head, total_size)
        return _mutagen(head, total_size)
    except Exception as exc:  # a malformed upload must fall back, whatever the parser raised
        log.warning("cannot read the audio duration (%s: %s); counting it as unknown",
                    type(exc).__name__, exc)
        return None


def _wav(head: bytes, total_size: int | None) -> float | None:
    byte_rate = 0
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        size: int = struct.unpack_from("<I", head, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt " and body + 12 <= len(head):
            byte_rate = int(struct.unpack_from("<I", head, body + 8)[0])
        elif chunk_id == b"data":
            if not byte_rate:
                break
            # Streamed WAVs leave the size 0 or 0xFFFFFFFF: take the bytes that follow.
            if size in (0, 0xFFFFFFFF) and total_size is not None:
                size = total_size - body
            return size / byte_rate
        pos = body + size + (size & 1)
    log.warning("WAV header without fmt/data chunks in the first %d bytes", len(head))
    return None


def _mutagen(head: bytes, total_size: int | None) -> float | None:
    audio = mutagen.File(io.BytesIO(head))
    info = getattr(audio, "info", None)
    if info is None:
        log.warning("unrecognised audio format (first bytes %r)", head[:8])
        return None
    length = float(getattr(info, "length", 0.0) or 0.0)
    bitrate = float(getattr(info, "bitrate", 0) or 0)
    partial = total_size is not None and total_size > len(head)
    if partial and bitrate > 0 and isinstance(audio, MP3 | OggFileType):
        # MP3 without a VBR header and Ogg (length from the last page) only know the
        # head's length; the frame bitrate and the real size say the whole file's.
        by_rate = (total_size or 0) * 8 / bitrate
        return max(length, by_rate) if isinstance(audio, MP3) else by_rate
    return length or None

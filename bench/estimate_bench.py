"""What routing costs a big upload: finding the `model` field and the audio file's header
in a 150 MB WAV multipart body, and estimating its tokens, as the router does it.

Prints a table and writes bench/results/estimate.json. Target: < 50 ms per upload.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from supervisor.proxy.multipart import ModelFieldScanner, file_part_head
from supervisor.proxy.router import FILE_HEAD_WINDOW
from supervisor.tokens.audio import HEAD_BYTES
from supervisor.tokens.estimate import Estimator

REPO = Path(__file__).resolve().parents[1]
BOUNDARY = "bench-boundary"
CHUNK = 1 << 16
TARGET_MS = 50.0


def wav_upload(seconds: int, model_first: bool) -> bytes:
    rate = 16000
    data_size = seconds * rate * 2
    header = (b"RIFF" + (36 + data_size).to_bytes(4, "little") + b"WAVEfmt "
              + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
              + rate.to_bytes(4, "little") + (rate * 2).to_bytes(4, "little")
              + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
              + b"data" + data_size.to_bytes(4, "little"))
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nstep-audio\r\n'
    audio = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="talk.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode()
    audio += header + bytes(data_size) + b"\r\n"
    parts = [model.encode(), audio] if model_first else [audio, model.encode()]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def route_once(body: bytes, estimator: Estimator) -> tuple[float, float, float]:
    """Seconds to find the model field, seconds to estimate, and the audio seconds found."""
    began = time.perf_counter()
    scanner = ModelFieldScanner(BOUNDARY)
    read = 0
    while not scanner.done:
        scanner.feed(body[read : read + CHUNK])
        read += CHUNK
    scanned = time.perf_counter()
    found = file_part_head(body[:FILE_HEAD_WINDOW], BOUNDARY, HEAD_BYTES)
    assert found is not None and scanner.model == "step-audio"
    offset, head = found
    need = estimator.for_upload(head, len(body) - offset)
    return scanned - began, time.perf_counter() - scanned, need.audio_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=4700, help="audio length (150 MB)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "estimate.json")
    args = parser.parse_args()
    estimator = Estimator(None, 1500, 12.5, 256)
    rows = []
    for model_first in (True, False):
        body = wav_upload(args.seconds, model_first)
        scans, estimates, audio = [], [], 0.0
        for _ in range(args.runs):
            scan, estimate, audio = route_once(body, estimator)
            scans.append(scan * 1e3)
            estimates.append(estimate * 1e3)
        rows.append({"layout": "model field first" if model_first else "model field last",
                     "body_mb": len(body) / 1e6, "audio_seconds": audio,
                     "find_model_median_ms": statistics.median(scans),
                     "estimate_median_ms": statistics.median(estimates),
                     "estimate_max_ms": max(estimates)})
    print(f"{'layout':20} {'body MB':>8} {'audio s':>8} {'find model ms':>14} "
          f"{'estimate ms':>12} {'max':>7}")
    for r in rows:
        ok = "ok" if r["estimate_median_ms"] < TARGET_MS else "FAIL"
        print(f"{r['layout']:20} {r['body_mb']:8.1f} {r['audio_seconds']:8.0f} "
              f"{r['find_model_median_ms']:14.2f} {r['estimate_median_ms']:12.2f} "
              f"{r['estimate_max_ms']:7.2f}  {ok} (estimate target < {TARGET_MS:.0f} ms)")
    print("find model: needed with or without profiles; with the field last it reads the "
          "whole body (into the spool) before anything can be routed")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-clip cost of decoding in the decoder child process against decoding in the calling process.

Run by hand, never as a test::

    python benchmarks/decoder_overhead.py --repeat 15

One synthetic MER2025-like clip (5 s, 25 fps, 640x360, with audio) is decoded alternately in this
process and through :mod:`ecmf_ray.extract.decoder_process` (frames and audio, as one clip of the
pipeline), after one warm-up call that starts the child. Both give identical arrays (checked). The last
line is one JSON object with the medians and minimums in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import decode, decoder_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip (configs/local.yaml)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ecmf_decoder_overhead_")
    synthesize(root, 1, duration_s=5.0, width=640, height=360, hide_prob=0.0)
    video_dir = os.path.join(root, "video")
    path = os.path.join(video_dir, sorted(os.listdir(video_dir))[0])
    frame_args, audio_args = (path, 224, args.frames, None, 1), (path, 16000)
    decoder_process.call(decode.read_frames, frame_args, 120, "warm-up")
    direct, child = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        frames, audio = decode.read_frames(*frame_args), decode.read_audio(*audio_args)
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        frames_c = decoder_process.call(decode.read_frames, frame_args, 120, "video decode")
        audio_c = decoder_process.call(decode.read_audio, audio_args, 120, "audio decode")
        child.append(time.perf_counter() - start)
        assert np.array_equal(frames, frames_c) and np.array_equal(audio, audio_c)
    result = {
        "frames_mb": round(frames.nbytes / 1e6, 2),
        "in_process_ms": {
            "median": round(1e3 * float(np.median(direct)), 1),
            "min": round(1e3 * min(direct), 1),
        },
        "child_ms": {"median": round(1e3 * float(np.median(child)), 1), "min": round(1e3 * min(child), 1)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""vmpipe's Whisper engine: faster-whisper, the model loaded once, answering the worker.

The worker starts this once per process (`VMPIPE_PYTHON -c <bootstrap> vmpipe-whisper-engine
CONFIG_JSON`, this file's text in the environment) and keeps it running; it dies with the
worker. It speaks JSON lines:

- first, on standard output, one line: {"event": "ready", "load_ms", "model", "multilingual",
  "rss_bytes", "versions"} once the model is loaded, or {"event": "fatal", "error"} and exit 1;
- then, for each request line {"id", "audio", "language"} on standard input (audio: a 16 kHz mono
  16-bit WAV of the worker's making; language: "auto" or a code), one answer line, in any order:
  {"id", "result": {"text", "language", "language_probability", "confidence", "segments"},
   "audio_ms", "run_ms", "rss_bytes"} or {"id", "error", "retry"}.

Up to `concurrency` requests are transcribed at once, sharing the model. End of standard input
(the worker closed it, or died) ends the engine. Standard error is the engine's log, which the
worker copies into its own. Nothing is ever downloaded: a model is a directory, or a name in the
local Hugging Face cache (HF_HUB_OFFLINE=1).
"""

import json
import math
import os
import sys
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor

os.environ["HF_HUB_OFFLINE"] = "1"

# Beam search as in OpenAI's Whisper; no conditioning on the previous window's text, which on
# long or noisy audio lets one hallucination repeat itself.
BEAM_SIZE = 5
# Voice-activity filter (Silero VAD, shipped in faster-whisper): silence and hold music are
# skipped, and long voicemails are cut at pauses.
VAD_PARAMETERS = {"min_silence_duration_ms": 500, "speech_pad_ms": 300}


class BadAudio(Exception):
    """The audio file is not what the worker promised: retrying cannot help."""


def main():
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    # Whatever the libraries print goes to the log, never into the protocol.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(message):
        line = json.dumps(message, ensure_ascii=False)
        with lock:
            protocol.write(line + "\n")
            protocol.flush()

    config = json.loads(sys.argv[-1])
    try:
        import ctranslate2
        import faster_whisper
        import numpy
        from faster_whisper import WhisperModel
    except ImportError as e:
        send({
            "event": "fatal",
            "error": f"{sys.executable} cannot import faster-whisper ({e}): install "
            "hooks/requirements.txt into a venv and point VMPIPE_PYTHON at its python",
        })
        return 1

    started = time.monotonic()
    name = config["model"]
    options = {
        "device": config["device"],
        "compute_type": config["compute_type"],
        "cpu_threads": config["threads"],
        "num_workers": config["concurrency"],
    }
    try:
        if os.path.isdir(name):
            model = WhisperModel(name, **options)
        elif os.sep in name or name.startswith("."):
            raise FileNotFoundError(f"no model directory {name}")
        else:
            model = WhisperModel(name, local_files_only=True, **options)
    except Exception as e:  # noqa: BLE001 - every cause is reported, as it is
        send({
            "event": "fatal",
            "error": f"cannot load the Whisper model {json.dumps(name)}: {type(e).__name__}: {e} "
            "(VMPIPE_WHISPER_MODEL is a CTranslate2 model directory, or the name of a model "
            "installed with the engine; none is ever downloaded at run time)",
        })
        return 1
    load_ms = round((time.monotonic() - started) * 1000)
    idle_priority()
    send({
        "event": "ready",
        "load_ms": load_ms,
        "model": name,
        "multilingual": bool(model.model.is_multilingual),
        "rss_bytes": rss_bytes(),
        "versions": {
            "faster_whisper": faster_whisper.__version__,
            "ctranslate2": ctranslate2.__version__,
        },
    })

    def handle(request):
        id = request.get("id")
        started = time.monotonic()
        try:
            audio = read_wav16k(request["audio"], numpy)
            result = transcribe(model, audio, request.get("language") or "auto")
            send({
                "id": id,
                "result": result,
                "audio_ms": round(len(audio) / 16),
                "run_ms": round((time.monotonic() - started) * 1000),
                "rss_bytes": rss_bytes(),
            })
        except BadAudio as e:
            send({"id": id, "error": str(e), "retry": False})
        except Exception as e:  # noqa: BLE001 - reported to the worker, which retries
            send({"id": id, "error": f"{type(e).__name__}: {e}", "retry": True})

    with ThreadPoolExecutor(max_workers=config["concurrency"]) as pool:
        for line in sys.stdin:
            if line.strip():
                pool.submit(handle, json.loads(line))
        pool.shutdown(wait=False, cancel_futures=True)
    return 0


def transcribe(model, audio, language):
    segments, info = model.transcribe(
        audio,
        language=None if language == "auto" else language,
        beam_size=BEAM_SIZE,
        vad_filter=True,
        vad_parameters=VAD_PARAMETERS,
        condition_on_previous_text=False,
    )
    kept = []
    weighted, seconds = 0.0, 0.0
    for segment in segments:
        text = segment.text.strip()
        if not text:
            continue
        kept.append({
            "start_ms": max(0, round(segment.start * 1000)),
            "end_ms": max(0, round(segment.end * 1000)),
            "text": text,
        })
        length = max(segment.end - segment.start, 0.01)
        weighted += segment.avg_logprob * length
        seconds += length
    # The geometric mean of the tokens' probabilities, weighted by each segment's length.
    confidence = min(1.0, max(0.0, math.exp(weighted / seconds))) if seconds else None
    return {
        "text": " ".join(segment["text"] for segment in kept),
        "language": info.language,
        "language_probability": info.language_probability,
        "confidence": confidence,
        "segments": kept,
    }


def read_wav16k(path, numpy):
    try:
        with wave.open(path, "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, 16000):
                raise BadAudio(f"{path}: not 16 kHz mono 16-bit PCM")
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as e:
        raise BadAudio(f"{path}: not a WAV file: {e}") from e
    return numpy.frombuffer(frames, dtype="<i2").astype(numpy.float32) / 32768.0


def idle_priority():
    """Every thread of the engine (CTranslate2's among them) under SCHED_IDLE once the model
    is loaded: transcription then only gets CPU time that indexing does not want. Threads
    started later inherit it."""
    if not hasattr(os, "SCHED_IDLE"):
        return
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(task), os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def rss_bytes():
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())

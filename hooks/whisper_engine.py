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
# skipped (without it Whisper hears "Thank you for watching!" in music), and long voicemails are
# cut at pauses. Silero's own threshold (0.5): a lower one lets music through. Generous padding
# and a longer pause before a cut keep the ends of words: on the benchmark's set the word error
# rate fell from 0.306 (pad 300 ms, pause 500 ms) to 0.266.
VAD_PARAMETERS = {"threshold": 0.5, "min_silence_duration_ms": 700, "speech_pad_ms": 600}
# A pause this long between two words ends a segment.
PAUSE_S = 1.0


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
    language = config.get("language", "auto")
    if language != "auto" and language not in model.supported_languages:
        send({
            "event": "fatal",
            "error": f"VMPIPE_WHISPER_LANGUAGE={language} is not a language the model "
            f"{json.dumps(name)} knows ({', '.join(model.supported_languages)}; or auto)",
        })
        return 1
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
            windows = read_windows(request["audio"], config.get("window_secs", 300), numpy)
            result, samples = transcribe(model, windows, request.get("language") or "auto")
            send({
                "id": id,
                "result": result,
                "audio_ms": round(samples / 16),
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


def transcribe(model, windows, language):
    """A voicemail given as (offset, samples) windows (`read_windows`: only one window of audio
    is in memory, as samples and as the model's features, however long the voicemail). Returns
    the result and the voicemail's length in samples."""
    kept = []
    weighted, seconds = 0.0, 0.0
    detected, probability = None, None
    samples = 0
    for offset, audio in windows:
        samples = offset + len(audio)
        parts, info, window_weighted, window_seconds = transcribe_window(
            model, audio, language if detected is None else detected
        )
        for part_ in parts:
            part_["start_ms"] += round(offset / 16)
            part_["end_ms"] += round(offset / 16)
        kept.extend(parts)
        weighted += window_weighted
        seconds += window_seconds
        if parts and detected is None and language == "auto":
            # The first window that has speech decides the language of the rest.
            detected, probability = info.language, info.language_probability
        elif parts and detected is None:
            detected, probability = info.language, info.language_probability
    # The geometric mean of the tokens' probabilities, weighted by each segment's length.
    confidence = min(1.0, max(0.0, math.exp(weighted / seconds))) if seconds else None
    return {
        "text": " ".join(segment["text"] for segment in kept),
        # Nothing heard, nothing detected (the model's guess on no speech is not a language).
        "language": detected if kept else None,
        "language_probability": probability if kept else None,
        "confidence": confidence,
        "segments": kept,
    }, samples


def transcribe_window(model, audio, language):
    segments, info = model.transcribe(
        audio,
        language=None if language == "auto" else language,
        beam_size=BEAM_SIZE,
        vad_filter=True,
        vad_parameters=VAD_PARAMETERS,
        condition_on_previous_text=False,
        # Timestamps from the words: a segment's own start is mapped back from the audio the
        # filter kept to the voicemail's timeline wrongly when it falls where a silence was cut.
        word_timestamps=True,
    )
    kept = []
    weighted, seconds = 0.0, 0.0
    for segment in segments:
        parts = [part_ for part_ in split_at_pauses(segment) if part_["text"]]
        if not parts:
            continue
        kept.extend(parts)
        length = max(sum(p["end_ms"] - p["start_ms"] for p in parts) / 1000, 0.01)
        weighted += segment.avg_logprob * length
        seconds += length
    return kept, info, weighted, seconds


def split_at_pauses(segment):
    """The segment as {"start_ms", "end_ms", "text"}, split where its words are PAUSE_S
    apart: Whisper hears the audio with the silences cut out, and one of its segments may run
    across a cut."""
    words = segment.words or []
    if not words:
        return [part(segment.start, segment.end, segment.text)]
    runs = [[words[0]]]
    for word in words[1:]:
        if word.start - runs[-1][-1].end >= PAUSE_S:
            runs.append([word])
        else:
            runs[-1].append(word)
    return [part(run[0].start, run[-1].end, "".join(w.word for w in run)) for run in runs]


def part(start, end, text):
    return {
        "start_ms": max(0, round(start * 1000)),
        "end_ms": max(0, round(end * 1000)),
        "text": text.strip(),
    }


def read_windows(path, window_secs, numpy):
    """(offset in samples, float samples) of the 16 kHz WAV at `path`, `window_secs` at a time;
    a window is cut at the quietest half second of its last quarter (at most 10 s)."""
    window = int(window_secs * 16000)
    try:
        with wave.open(path, "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, 16000):
                raise BadAudio(f"{path}: not 16 kHz mono 16-bit PCM")
            total = wav.getnframes()
            offset = 0
            while offset < total or offset == 0:
                wav.setpos(offset)
                audio = numpy.frombuffer(wav.readframes(window), dtype="<i2").astype(
                    numpy.float32
                )
                audio *= 1 / 32768.0
                if offset + len(audio) < total and len(audio) == window:
                    audio = audio[: quietest_cut(audio, numpy)]
                yield offset, audio
                if len(audio) == 0:
                    return
                offset += len(audio)
    except (wave.Error, EOFError) as e:
        raise BadAudio(f"{path}: not a WAV file: {e}") from e


def quietest_cut(audio, numpy):
    """Where to end a window: the middle of its quietest half second (in 100 ms steps) within
    its last quarter, at most its last 10 s."""
    step = 1600
    search = min(len(audio) // 4, 10 * 16000) // step * step
    tail = audio[len(audio) - search:]
    energy = (tail.reshape(-1, step) ** 2).mean(axis=1)
    half_second = numpy.convolve(energy, numpy.ones(5), "valid")
    quietest = int(numpy.argmin(half_second))
    return len(audio) - search + (quietest + 2) * step + step // 2


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

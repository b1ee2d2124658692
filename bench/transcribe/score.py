#!/usr/bin/env python3
"""Word error rate for the transcription benchmark, and a direct run of faster-whisper.

    score.py wer < pairs.jsonl
        Reads one JSON object a line, {"id", "reference", "hypothesis"}, and writes one a line,
        {"id", "wer", "errors", "words", "reference", "hypothesis"} (both texts as normalised),
        then {"total": {"wer", "errors", "words"}}. The total is the corpus WER: all the errors
        over all the reference words. (tests/benches/transcribe.rs runs this.)

    score.py direct --set DIR --model MODEL [--compute-type int8] [--language auto] [--threads N]
        Transcribes every file of DIR/manifest.tsv (bench/transcribe/make-set.sh makes it) with
        faster-whisper in this process, the model loaded once, with the engine's own options
        (hooks/whisper_engine.py's transcribe: beam 5, VAD, no conditioning on previous text),
        and prints per file and in total: WER, audio seconds, run time, real-time factor, CPU
        time; the model's load time and this process's peak RSS. For comparing models without
        the rest of vmpipe (and without the engine's idle CPU priority).

Both sides are normalised by whisper-normalizer's EnglishTextNormalizer (a port of Whisper's
own): numbers spelled out become digits ("four four seven one" stays apart, "forty-four
seventy-one" becomes "4471"), "$129.50" and "129 dollars 50 cents" meet, punctuation and
case go, British spellings become American.
"""

import argparse
import json
import os
import resource
import sys
import time

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

NORMALISE = EnglishTextNormalizer()


def score(reference, hypothesis):
    """(errors, reference words, normalised reference, normalised hypothesis)."""
    ref = NORMALISE(reference).split()
    hyp = NORMALISE(hypothesis or "").split()
    if not ref:
        return len(hyp), 0, "", " ".join(hyp)
    if not hyp:
        return len(ref), len(ref), " ".join(ref), ""
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    errors = out.substitutions + out.deletions + out.insertions
    return errors, len(ref), " ".join(ref), " ".join(hyp)


def wer_command(_args):
    errors_total = words_total = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        pair = json.loads(line)
        errors, words, ref, hyp = score(pair["reference"], pair.get("hypothesis"))
        errors_total += errors
        words_total += words
        print(json.dumps({
            "id": pair["id"],
            "wer": errors / words if words else float(errors > 0),
            "errors": errors,
            "words": words,
            "reference": ref,
            "hypothesis": hyp,
        }))
    print(json.dumps({"total": {
        "wer": errors_total / words_total if words_total else 0.0,
        "errors": errors_total,
        "words": words_total,
    }}))


def manifest(set_dir):
    with open(os.path.join(set_dir, "manifest.tsv"), encoding="utf-8") as f:
        for line in f:
            voicemail, coding, kind, name, reference = line.rstrip("\n").split("\t")
            yield voicemail, coding, kind, os.path.join(set_dir, name), reference


def direct_command(args):
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../hooks"))
    from whisper_engine import transcribe

    started = time.monotonic()
    model = WhisperModel(args.model, device="cpu", compute_type=args.compute_type,
                         cpu_threads=args.threads, local_files_only=True)
    load_s = time.monotonic() - started
    print(f"model {args.model} ({args.compute_type}), loaded in {load_s:.2f} s; "
          f"the engine's options, language {args.language}, threads {args.threads or 'auto'}")
    print(f"{'file':<22} {'audio s':>8} {'run ms':>8} {'x real':>7} {'cpu s':>7} {'WER':>6}  "
          "hypothesis")
    totals = {"audio": 0.0, "run": 0.0, "cpu": 0.0, "errors": 0, "words": 0}
    by_coding = {}
    for voicemail, coding, kind, path, reference in manifest(args.set):
        audio = decode_audio(path)
        seconds = len(audio) / 16000
        started, cpu_started = time.monotonic(), time.process_time()
        text = transcribe(model, [(0, audio)], args.language)[0]["text"]
        run = time.monotonic() - started
        cpu = time.process_time() - cpu_started
        errors, words, _ref, hyp = score(reference, text)
        for group in (coding, kind):
            by_coding.setdefault(group, {"audio": 0.0, "run": 0.0, "cpu": 0.0, "errors": 0,
                                         "words": 0})
        for bucket in (totals, by_coding[coding], by_coding[kind]):
            bucket["audio"] += seconds
            bucket["run"] += run
            bucket["cpu"] += cpu
            bucket["errors"] += errors
            bucket["words"] += words
        print(f"{voicemail + '.' + coding:<22} {seconds:8.2f} {run * 1000:8.0f} "
              f"{seconds / run:7.2f} {cpu:7.2f} {errors / max(words, 1):6.3f}  {hyp}", flush=True)
    for name, bucket in sorted(by_coding.items()) + [("total", totals)]:
        print(f"{name:<22} {bucket['audio']:8.2f} {bucket['run'] * 1000:8.0f} "
              f"{bucket['audio'] / max(bucket['run'], 1e-9):7.2f} {bucket['cpu']:7.2f} "
              f"{bucket['errors'] / max(bucket['words'], 1):6.3f}  "
              f"({bucket['errors']} errors in {bucket['words']} words)")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mib:.0f} MiB; CPU s per audio s: "
          f"{totals['cpu'] / max(totals['audio'], 1e-9):.3f}; load average at the end: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wer", help="score JSON lines of reference and hypothesis from stdin")
    direct = commands.add_parser("direct", help="transcribe the set with faster-whisper itself")
    direct.add_argument("--set", required=True, help="a directory made by make-set.sh")
    direct.add_argument("--model", required=True,
                        help="a CTranslate2 model directory, or a name in the Hugging Face cache")
    direct.add_argument("--compute-type", default="int8")
    direct.add_argument("--language", default="auto")
    direct.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    {"wer": wer_command, "direct": direct_command}[args.command](args)


if __name__ == "__main__":
    main()

"""Transcribes a voicemail with PocketSphinx (offline, US English).

Usage: python3 -c "$(cat pocketsphinx.py)" VOICEMAIL.wav
The WAV must be 16 kHz mono 16-bit PCM (the worker converts every voicemail to that first).
Prints one JSON object on stdout: {"text": ..., "language": "en-us", "confidence": ...}.
On failure, prints a message on stderr and exits non-zero (2: pocketsphinx not installed).
Needs `pip install pocketsphinx` (see requirements.txt); its model ships inside the package.
"""

import json
import sys
import wave


def fail(message, status=1):
    print(f"pocketsphinx: {message}", file=sys.stderr)
    sys.exit(status)


try:
    from pocketsphinx import Decoder, Endpointer
except ImportError:
    fail("python package pocketsphinx is not installed: pip install pocketsphinx", 2)

if len(sys.argv) != 2:
    fail("usage: pocketsphinx.py VOICEMAIL.wav (16 kHz mono 16-bit PCM)")
path = sys.argv[1]

try:
    wav = wave.open(path, "rb")
except (OSError, EOFError, wave.Error) as e:
    fail(f"cannot read {path}: {str(e) or 'unexpected end of file'}")
rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
if (rate, channels, width) != (16000, 1, 2):
    fail(f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; want 16 kHz mono 16-bit")

# The endpointer (voice activity detection) cuts the message at its pauses into utterances,
# each decoded on its own: long messages stay fast and accurate. A 0.5 s window (default 0.3)
# keeps the short gaps inside sentences from splitting words.
endpointer = Endpointer(window=0.5, sample_rate=16000)
decoder = Decoder(samprate=16000, loglevel="FATAL")
words, posteriors = [], []


def decode(utterance):
    # Whole utterance at once (full_utt): cepstral mean normalisation then uses its own mean,
    # which recognises noticeably better than the running estimate of live decoding.
    decoder.start_utt()
    decoder.process_raw(utterance, full_utt=True)
    decoder.end_utt()
    for seg in decoder.seg():
        # Silences and fillers (<s>, </s>, <sil>, [NOISE], ...) are not words.
        if seg.word.startswith(("<", "[")):
            continue
        words.append(seg.word.split("(")[0])  # "read(2)": a pronunciation variant
        posteriors.append(seg.prob)  # posterior probability, 0..1


try:
    utterance = []
    while True:
        frame = wav.readframes(endpointer.frame_bytes // 2)
        last = len(frame) < endpointer.frame_bytes
        if last:
            # A short (or empty) last frame: flushes the speech the recording ends in.
            speech = endpointer.end_stream(frame) if endpointer.in_speech else None
        else:
            speech = endpointer.process(frame)
        if speech is not None:
            utterance.append(speech)
        if utterance and (last or not endpointer.in_speech):
            decode(b"".join(utterance))
            utterance = []
        if last:
            break
except (OSError, EOFError, wave.Error) as e:
    fail(f"cannot read {path}: {str(e) or 'unexpected end of file'}")
except (RuntimeError, ValueError) as e:
    fail(f"decoding {path}: {e}")

result = {"text": " ".join(words), "language": "en-us"}
if posteriors:
    # Mean word posterior: a rough 0..1 figure, low when the recogniser was guessing.
    result["confidence"] = round(sum(posteriors) / len(posteriors), 3)
print(json.dumps(result))

#!/usr/bin/env bash
# Makes the transcription benchmark's evaluation set in OUT_DIR from set.tsv: every voicemail coded
# as KAZOO records it, 8 kHz mono 16-bit WAV and 8 kHz mono MP3 at 16 kbps, through a telephone
# band (300-3400 Hz). Synthesized ones are spoken by espeak-ng; real ones come from real/.
# Writes OUT_DIR/manifest.tsv: id, coding (wav, mp3), kind (synthesized, real), file, reference.
#   bench/transcribe/make-set.sh OUT_DIR
# Needs espeak-ng, sox and lame (Debian packages of those names).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make-set.sh OUT_DIR}
for tool in espeak-ng sox lame; do
  command -v "$tool" >/dev/null || { echo "make-set.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
mkdir -p "$out"
manifest="$out/manifest.tsv"
: >"$manifest"
while IFS=$'\t' read -r id source voice speed reference; do
  case "$id" in '' | '#'*) continue ;; esac
  raw="$out/$id.source.wav"
  kind=real
  if [ "$source" = espeak ]; then
    kind=synthesized
    espeak-ng -v "$voice" -s "$speed" -w "$raw" -- "$reference"
  else
    IFS=+ read -r -a parts <<<"$source"
    sox "${parts[@]/#/$here/}" "$raw"
  fi
  # The telephone band, 8 kHz, 16-bit, a little headroom against clipping.
  sox -q "$raw" -r 8000 -c 1 -b 16 "$out/$id.wav" gain -n -3 sinc 300-3400
  lame --quiet -m m -b 16 --resample 8 "$out/$id.wav" "$out/$id.mp3"
  rm -f "$raw"
  printf '%s\twav\t%s\t%s\t%s\n' "$id" "$kind" "$id.wav" "$reference" >>"$manifest"
  printf '%s\tmp3\t%s\t%s\t%s\n' "$id" "$kind" "$id.mp3" "$reference" >>"$manifest"
done <"$here/set.tsv"
echo "make-set.sh: $(wc -l <"$manifest") files in $out" >&2

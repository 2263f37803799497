#!/usr/bin/env bash
# Fetches the real recordings the audio analysis is measured on (its second, smaller truth set).
#
#   bash scripts/fetch_recordings.sh [CACHE_DIR]      (default: .cache/recordings)
#
# Source: the synctoolbox source distribution on PyPI (through pip: the only network access).
# Its code is MIT; its data files are not: the Schubert songs come from the Schubert Winterreise
# Dataset (CC BY 3.0; the SC06 performance by the Isabella Stewart Gardner Museum under the same
# licence, not to be redistributed modified; HU33 public domain), the Chopin excerpts from the FMP
# notebooks (AudioLabs Erlangen). They are used here for measurement only, never committed.
#   data_music/Schubert_D911-0{1,3}_{HU33,SC06}.wav + data_csv/*.csv (measure positions)
#   data_music/Chopin_Op010-03-Measures1-8_{Igoshina,Varsi}.wav
#                                                   -> CACHE/*.wav, CACHE/*.csv, CACHE/LICENCE...
# Idempotent: a stamp file records the pinned version; a second run with the same pin only
# prints the count. The folder is built in a temporary directory and moved into place.
set -euo pipefail

CACHE="${1:-.cache/recordings}"
SYNCTOOLBOX_VERSION="${SYNCTOOLBOX_VERSION:-1.4.2}"
PYTHON="${PYTHON:-python3}"
STAMP="$CACHE/FETCHED"
WANT="synctoolbox==$SYNCTOOLBOX_VERSION"

print_count() {
  echo "recordings: $(find "$CACHE" -maxdepth 1 -name '*.wav' | wc -l) files in $CACHE"
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "recording cache $CACHE is up to date ($WANT)"
  print_count
  exit 0
fi

DOWNLOADS="$(dirname "$CACHE")/_downloads"
mkdir -p "$DOWNLOADS"
SDIST="$DOWNLOADS/synctoolbox-$SYNCTOOLBOX_VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "$WANT" -d "$DOWNLOADS"
fi
[[ -f "$SDIST" ]] || { echo "pip did not produce $SDIST" >&2; exit 1; }

mkdir -p "$(dirname "$CACHE")"
TMP="$(mktemp -d "$(dirname "$CACHE")/.recordings.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
TOP="synctoolbox-$SYNCTOOLBOX_VERSION"
tar -xzf "$SDIST" -C "$TMP" "$TOP/data_music" "$TOP/data_csv" "$TOP/LICENCE" "$TOP/README.md"
mkdir -p "$TMP/out"
mv "$TMP/$TOP"/data_music/*.wav "$TMP/$TOP"/data_csv/Schubert_*.csv "$TMP/out/"
mv "$TMP/$TOP/LICENCE" "$TMP/out/LICENCE.synctoolbox"
mv "$TMP/$TOP/README.md" "$TMP/out/README.synctoolbox.md"
for want in Schubert_D911-01_HU33 Schubert_D911-01_SC06 Schubert_D911-03_HU33 Schubert_D911-03_SC06 \
    Chopin_Op010-03-Measures1-8_Igoshina Chopin_Op010-03-Measures1-8_Varsi; do
  [[ -f "$TMP/out/$want.wav" ]] || { echo "no $want.wav in $SDIST" >&2; exit 1; }
done
(cd "$TMP/out" && sha256sum ./*.wav ./*.csv > FILES.sha256)
echo "$WANT" > "$TMP/out/FETCHED"
rm -rf "$CACHE"
mv "$TMP/out" "$CACHE"
echo "fetched $WANT into $CACHE"
print_count

#!/usr/bin/env bash
# Fetches the offline expressive-performance corpus used for DUV humanisation.
#
#   bash scripts/fetch_performances.sh [CACHE_DIR]      (default: .cache/performances)
#
# Sources, both from PyPI through pip (the only network access in the DUV data path):
#   miditok sdist (MIT; its test folder holds 10 MAESTRO performances, CC BY-NC-SA 4.0, and
#     4 POP909 songs, MIT)                       -> CACHE/maestro/*.mid, CACHE/pop909/*.mid
#   parangonar wheel (Apache-2.0; mozart_k265_var1.match, a performance aligned note by note
#     to its score)                              -> CACHE/mozart/*.match
# Idempotent: a stamp file records the pinned versions; a second run with the same pins only
# prints the counts. Each folder is built in a temporary directory and moved into place.
set -euo pipefail

CACHE="${1:-.cache/performances}"
MIDITOK_VERSION="${MIDITOK_VERSION:-3.1.0}"
PARANGONAR_VERSION="${PARANGONAR_VERSION:-3.4.0}"
PYTHON="${PYTHON:-python3}"
STAMP="$CACHE/FETCHED"
WANT="miditok==$MIDITOK_VERSION parangonar==$PARANGONAR_VERSION"

print_counts() {
  for source in maestro pop909 mozart; do
    echo "$source: $(find "$CACHE/$source" -maxdepth 1 -type f | wc -l) files in $CACHE/$source"
  done
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "performance cache $CACHE is up to date ($WANT)"
  print_counts
  exit 0
fi

mkdir -p "$CACHE/_downloads"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
  "miditok==$MIDITOK_VERSION" -d "$CACHE/_downloads"
"$PYTHON" -m pip download --quiet --no-deps --only-binary :all: \
  "parangonar==$PARANGONAR_VERSION" -d "$CACHE/_downloads"

SDIST="$CACHE/_downloads/miditok-$MIDITOK_VERSION.tar.gz"
WHEEL="$CACHE/_downloads/parangonar-$PARANGONAR_VERSION-py3-none-any.whl"
for archive in "$SDIST" "$WHEEL"; do
  [[ -f "$archive" ]] || { echo "pip did not produce $archive" >&2; exit 1; }
done

TMP="$(mktemp -d "$CACHE/.extract.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
ONE_TRACK="miditok-$MIDITOK_VERSION/tests/MIDIs_one_track"
tar -xzf "$SDIST" -C "$TMP" "$ONE_TRACK"
mkdir -p "$TMP/maestro" "$TMP/pop909" "$TMP/mozart"
mv "$TMP/$ONE_TRACK"/Maestro_*.mid "$TMP/maestro/"
mv "$TMP/$ONE_TRACK"/POP909_*.mid "$TMP/pop909/"
"$PYTHON" - "$WHEEL" "$TMP/mozart" <<'EOF'
import pathlib, sys, zipfile
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
  members = [n for n in zf.namelist() if n.endswith(".match")]
  if not members:
    sys.exit(f"no .match file in {wheel}")
  for name in members:
    (out / pathlib.PurePosixPath(name).name).write_bytes(zf.read(name))
EOF

for source in maestro pop909 mozart; do
  if [[ -z "$(ls -A "$TMP/$source")" ]]; then
    echo "no $source files found in the downloaded archives ($WANT)" >&2
    exit 1
  fi
  rm -rf "$CACHE/$source"
  mv "$TMP/$source" "$CACHE/$source"
done
(cd "$CACHE" && sha256sum maestro/* pop909/* mozart/* > FILES.sha256)
echo "$WANT" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "fetched $WANT into $CACHE"
print_counts

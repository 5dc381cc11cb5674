#!/usr/bin/env bash
# Renders pages of the built site (docs/_build/html) to PNG with headless Chromium, as a reader
# sees them, with no network: the math must come from the site's own copy of MathJax.
#   apt-get install -y chromium      # Debian's package
#   bash docs/screenshots.sh [page.html ...]   # default: the index, lamb's page, two guides
# Writes docs/_build/screenshots/<page>.png.
set -euo pipefail
cd "$(dirname "$0")"
html=_build/html
out=_build/screenshots
mkdir -p "$out"
pages=("$@")
if [ ${#pages[@]} -eq 0 ]; then
  pages=(index.html api/optimizers.lamb.html guides/migrating_from_torch.html)
  [ -f "$html/guides/migrating_from_optax.html" ] && pages+=(guides/migrating_from_optax.html)
fi
for page in "${pages[@]}"; do
  png="$out/$(echo "${page%.html}" | tr / _).png"
  profile=$(mktemp -d)
  # --virtual-time-budget lets MathJax typeset before the picture is taken.
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --hide-scrollbars --virtual-time-budget=10000 --window-size=1200,1800 \
    --screenshot="$PWD/$png" "file://$PWD/$html/$page" >/dev/null 2>&1 || true
  rm -rf "$profile"
  if [ -s "$png" ]; then echo "$png"; else echo "no screenshot of $page" >&2; exit 1; fi
done

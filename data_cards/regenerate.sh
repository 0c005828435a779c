#!/bin/sh
# Regenerate the reference dataset cards under data_cards/ (one build per card).
#
#   sh data_cards/regenerate.sh [BUILD_ROOT]
#
# Builds LFW at mask ratio 0.1 from data_cards/lfw-r0.1/recipe.yaml into BUILD_ROOT/lfw-r0.1
# (default: build/, which git ignores; an existing build there is resumed), then writes its
# DATA_CARD.md, report.md, report.html, report/*.png and stats.json into data_cards/lfw-r0.1,
# without sample thumbnails (--no-thumbnails): the committed files hold no copy of an LFW image.
# LFW is found through MASKGEN_DATA_HOME (or downloaded into it). The outputs carry no
# timestamp or machine path: an unchanged build regenerates identical files.
set -eu
cd "$(dirname "$0")/.."
ROOT="${1:-build}"
for card in lfw-r0.1; do
    maskgen build --config "data_cards/$card/recipe.yaml" --out "$ROOT/$card"
    maskgen card "$ROOT/$card" --out "data_cards/$card" --name "$card" --no-thumbnails \
        --reproduce "sh data_cards/regenerate.sh"
done

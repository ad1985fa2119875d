#!/bin/sh
# Run the whole suite (busted specs, TAP output) and end with one line:
# "N passed, M failed".
cd "$(dirname "$0")/.." || exit 1
out=$(mktemp)
busted --lua=lua5.4 -o TAP "$@" spec > "$out" 2>&1
status=$?
cat "$out"
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
rm -f "$out"
# A crash or an error outside any test leaves no TAP line for it.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

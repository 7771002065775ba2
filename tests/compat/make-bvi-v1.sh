#!/bin/sh
# How the frozen format-1 one-file images under tests/compat/bvi-v1/ were made (once,
# with blockvault at the commit that added them): the "second" snapshot of each frozen
# repository of v1/ exported, the encrypted one in 16 KiB pieces. Do NOT rerun to
# "refresh" them: they are the promise that every later version reads what the first
# .bvi writer wrote. tests/compat/test_compat_bvi.py restores them and compares with
# v1/EXPECTED.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
BLOCKVAULT_PASSWORD=$(cat "$here/v1/passphrase")
export BLOCKVAULT_PASSWORD
blockvault -r "$here/v1/plain" export 996d0298c978 "$here/bvi-v1/plain.bvi"
blockvault -r "$here/v1/encrypted" export 1efefad1ef68 "$here/bvi-v1/encrypted.bvi" --split 16K

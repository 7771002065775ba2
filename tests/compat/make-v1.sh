#!/bin/sh
# How the frozen format-1 repositories under tests/compat/v1/ were made (once, with
# blockvault at commit ae9ec28, before any format change). Do NOT rerun to "refresh"
# them: they are the promise that every later version reads what version 1 wrote.
# tests/compat/test_compat.py restores them and compares with EXPECTED.
#
# The disk: an 8 MiB MBR image, partition 1 ext4 (4 MiB, files from a seeded
# generator), partition 2 FAT12 (3 MiB), a GRUB-like signature in the gap before
# partition 1. Two snapshots per repository: "first", then "second" after files in
# both partitions changed (so the second shares most chunks with the first).
# Chunk size 16 KiB so the snapshots have many chunks and holes; zstd:3.
# Needs: sfdisk, mke2fs (1.47), mkfs.vfat, mcopy, blockvault on PATH. No root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$here/v1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000
MiB=1048576

content() {  # content DIR SEED: a small deterministic tree
    mkdir -p "$1/etc" "$1/home/user/docs" "$1/var/log"
    i=0
    while [ $i -lt 40 ]; do
        seq "$2" 7 $((2000 + i * 300)) > "$1/home/user/docs/note-$i.txt"
        i=$((i + 1))
    done
    printf 'hostname compat\n' > "$1/etc/hostname"
    head -c 200000 /dev/zero | tr '\0' 'x' > "$1/var/log/big.log"
    ln -s ../etc/hostname "$1/home/user/link"
}

disk=$work/disk.img
truncate -s $((8 * MiB)) "$disk"
printf 'label: dos\nlabel-id: 0x1c0ffee1\nstart=2048, size=8192, type=83\nstart=10240, size=6144, type=1\n' \
    | sfdisk -q "$disk"
printf 'GRUB compat stage 1.5' | dd of="$disk" bs=512 seek=1 conv=notrunc status=none

make_parts() {  # make_parts SEED: (re)build both filesystems from SEED
    rm -rf "$work/tree" "$work/fat" && content "$work/tree" "$1"
    truncate -s 0 "$work/p1" && truncate -s $((4 * MiB)) "$work/p1"
    mke2fs -q -F -t ext4 -b 1024 -U 0b5e55ed-0000-4000-8000-00000000c0de \
        -E hash_seed=0b5e55ed-0000-4000-8000-00000000beef,root_owner=0:0 \
        -d "$work/tree" "$work/p1"
    truncate -s 0 "$work/p2" && truncate -s $((3 * MiB)) "$work/p2"
    mkfs.vfat -F 12 -i 1c0ffee2 -n COMPAT "$work/p2" > /dev/null
    mkdir -p "$work/fat" && seq "$1" 3 30000 > "$work/fat/numbers.txt"
    MTOOLS_SKIP_CHECK=1 mcopy -m -i "$work/p2" "$work/fat/numbers.txt" ::/
    dd if="$work/p1" of="$disk" bs=512 seek=2048 conv=notrunc status=none
    dd if="$work/p2" of="$disk" bs=512 seek=10240 conv=notrunc status=none
}

rm -rf "$out" && mkdir -p "$out"
printf 'compat-fixture-passphrase\n' > "$out/passphrase"
for kind in plain encrypted; do
    if [ $kind = encrypted ]; then enc=repokey; else enc=none; fi
    blockvault --password-file "$out/passphrase" -r "$out/$kind" init \
        --chunk-size 16KiB --encryption $enc > /dev/null
done
: > "$out/EXPECTED"
for seed in 1 2; do
    make_parts $seed
    tag=$([ $seed = 1 ] && echo first || echo second)
    for kind in plain encrypted; do
        id=$(blockvault --password-file "$out/passphrase" -r "$out/$kind" backup --tag $tag "$disk")
        blockvault --password-file "$out/passphrase" -r "$out/$kind" restore "$id" "$work/restored.img" > /dev/null
        echo "$kind $tag $id $(sha256sum < "$work/restored.img" | cut -d' ' -f1)" >> "$out/EXPECTED"
        rm "$work/restored.img"
    done
    echo "source $tag - $(sha256sum < "$disk" | cut -d' ' -f1)" >> "$out/EXPECTED"
done
rm -rf "$out"/*/sessions "$out"/*/gc
du -sh "$out"
cat "$out/EXPECTED"

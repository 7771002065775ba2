#!/bin/bash
# Run Clonezilla's `ocs-sr` on loop devices, inside `unshare -m`.
#
# usage: unshare -m ocs_namespace.sh WORKDIR NAME:DEVICE... -- COMMAND...
# The first NAME:DEVICE is the disk (sda:/dev/loop7), the others its partitions
# (sda1:/dev/loop8 ...), each a loop device over the right byte range; COMMAND
# (ocs-sr with its arguments) then runs with them as /dev/sda, /dev/sda1 ... This kernel
# makes no partition devices for loop devices, so the namespace gets its own /dev,
# /proc/partitions and /sys/block naming them; ocs-sr's logs and caches go to private
# tmpfs mounts so parallel runs do not meet.
set -eu
work=$1
shift
disk=${1%%:*}
devices=()
while [ "$1" != "--" ]; do devices+=("$1"); shift; done
shift
mount --make-rprivate /
mkdir -p "$work/dev" "$work/sysblock" /tmp/ocs-cache
mount -t tmpfs tmpfs "$work/dev"
mount -t tmpfs tmpfs "$work/sysblock"
mount -t tmpfs tmpfs /tmp/ocs-cache
mount -t tmpfs tmpfs /var/log
cp -a /dev/. "$work/dev/" 2>/dev/null || true
partitions="major minor  #blocks  name\n\n"
for pair in "${devices[@]}"; do
    name=${pair%%:*} device=${pair#*:}
    mm=$(stat -c '%t %T' "$device")
    major=$((16#${mm% *})) minor=$((16#${mm#* }))
    sectors=$(($(blockdev --getsize64 "$device") / 512))
    rm -f "$work/dev/$name"
    mknod -m 0660 "$work/dev/$name" b "$major" "$minor"
    partitions="$partitions$(printf '%4d %7d %10d %s' "$major" "$minor" $((sectors / 2)) "$name")\n"
    if [ "$name" = "$disk" ]; then dir=$work/sysblock/$name; else dir=$work/sysblock/$disk/$name; fi
    mkdir -p "$dir/queue"
    echo "$sectors" > "$dir/size"
    echo 0 > "$dir/ro"
    echo 0 > "$dir/removable"
    echo 512 > "$dir/queue/logical_block_size"
    echo 512 > "$dir/queue/physical_block_size"
    echo "$major:$minor" > "$dir/dev"
    if [ "$name" != "$disk" ]; then echo "${name#"$disk"}" | tr -d p > "$dir/partition"; fi
done
printf "$partitions" > "$work/partitions"
mount --bind "$work/dev" /dev
mount --bind "$work/partitions" /proc/partitions
mount --bind "$work/sysblock" /sys/block
# ocs-sr runs os-prober and linux-boot-prober to describe the machine; their grub-mount
# daemons would outlive the namespace and keep the loop devices busy
for prober in os-prober linux-boot-prober; do
    if command -v "$prober" >/dev/null; then mount --bind /bin/true "$(command -v "$prober")"; fi
done
exec "$@"

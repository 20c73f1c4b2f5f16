#!/bin/sh
# /init of the VM test's initramfs (tests/vm/harness.rs packs it; busybox is /bin/busybox).
# Loads the modules listed in /modules/order (dependencies first), mounts the three virtio
# disks the host attached (vda: XFS, vdb: ext4 with quota,project; both with prjquota;
# vdc: XFS without quotas), runs the payload and reports to the serial console in lines
# the host parses:
#   BERTH-VM-BOOTED: <uptime>   when /init starts (the kernel's boot time)
#   CHECK ... / INFO ... / BERTH-VM-RESULT: ...   from the payload
#   BERTH-VM-PAYLOAD: <start> <end>   uptimes around the payload
#   BERTH-VM-EXIT: <status>   the payload's exit status
# then powers off (QEMU runs with -no-reboot, so it exits).

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "BERTH-VM-BOOTED: $(uptime_s)"

while read -r m; do
  insmod "/modules/$m" || echo "BERTH-VM: insmod $m failed"
done < /modules/order

i=0
while [ ! -b /dev/vdc ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done

mkdir -p /mnt/xfs /mnt/ext4 /mnt/plain
mount -t xfs -o prjquota /dev/vda /mnt/xfs || echo "BERTH-VM: mount /dev/vda (xfs, prjquota) failed"
mount -t ext4 -o prjquota /dev/vdb /mnt/ext4 || echo "BERTH-VM: mount /dev/vdb (ext4, prjquota) failed"
mount -t xfs /dev/vdc /mnt/plain || echo "BERTH-VM: mount /dev/vdc (xfs) failed"

start=$(uptime_s)
/payload xfs=/mnt/xfs ext4=/mnt/ext4 plain=/mnt/plain
rc=$?
echo "BERTH-VM-PAYLOAD: $start $(uptime_s)"
echo "BERTH-VM-EXIT: $rc"

umount /mnt/xfs /mnt/ext4 /mnt/plain
sync
poweroff -f

# Sourced by benches (not one itself).

# halt_boot_sector DIR IMAGE: writes into IMAGE (qcow2) a boot sector that
# halts the CPU (cli; hlt; jmp back), made in DIR. A guest with nothing to
# boot would keep its TCG thread busy, and a host of them would measure the
# guests, not fi-backup.
halt_boot_sector() {
  printf '\xfa\xf4\xeb\xfd' > "$1/boot.bin"
  head -c 506 /dev/zero >> "$1/boot.bin"
  printf '\x55\xaa' >> "$1/boot.bin"
  qemu-io -f qcow2 -c "write -s $1/boot.bin 0 512" "$2" >/dev/null
}

# fresh_write DOMAIN DISK OFFSET_MIB LENGTH_MIB: writes LENGTH_MIB MiB of a
# random byte (0x10-0xff) at OFFSET_MIB MiB into the running DOMAIN's disk
# number DISK (0 for vda), as its guest would. The byte is given in hex:
# qemu-io refuses one over 0xff and says so only in the domain's log, not
# to the monitor, so a bad pattern loses the write silently (an earlier
# "0x<decimal>" pattern lost 58% of the writes of several benches).
fresh_write() {
  local byte
  byte=$(printf '0x%02x' $((RANDOM % 240 + 16)))
  virsh -q -c qemu:///system qemu-monitor-command "$1" --hmp \
    "qemu-io -d /machine/peripheral/virtio-disk$2/virtio-backend \"write -P $byte $3M $4M\"" >/dev/null
}

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

# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fi_backup_global_optspecs
    string join \n b/backup_dir= c/consolidate_only C/consolidate_and_snapshot m/method= q/quiesce s/dump_state_dir= overlay-dir= live quiesce-fallback d/debug r/all_running v/verbose log-timestamps dry-run json metrics= connect= lock-dir= state-dir= commit-all commit-through pull-devices bandwidth= timeout= jobs= copy-jobs= keep-last= keep-hourly= keep-daily= keep-weekly= keep-monthly= keep-yearly= sync-to= sync-bwlimit= h/help V/version
end

function __fish_fi_backup_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fi_backup_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fi_backup_using_subcommand
    set -l cmd (__fish_fi_backup_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fi-backup -n "__fish_fi_backup_needs_command" -s b -l backup_dir -l backup-dir -d 'Copy the files below the new snapshot into DIR (one subdirectory per domain)' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s m -l method -d 'Consolidation method' -r -f -a "blockcommit\t'Commit the chain into its base, then pivot to the base'
blockpull\t'Pull the chain into the top overlay'"
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s s -l dump_state_dir -l dump-state-dir -d 'Save the domain\'s memory state into DIR together with the disk snapshot' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l overlay-dir -d 'Where the snapshot overlays of block-device disks go (in a directory per domain UUID; default: under the state directory)' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l metrics -d 'After the run, write Prometheus metrics of each domain to FILE (for node_exporter\'s textfile collector; replaced atomically, mode 0644)' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l connect -d 'libvirt connection URI' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l bandwidth -d 'Bandwidth limit of consolidation jobs, MiB/s (0: none)' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l timeout -d 'Cancel a consolidation job that has not finished after SECS seconds' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l jobs -d 'How many domains are handled at once' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l copy-jobs -d 'How many files are copied at once, over all domains of the run' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-last -d 'Keep the N newest restore points' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-hourly -d 'Keep the newest point of each of the N most recent hours that have one' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-daily -d 'Keep the newest point of each of the N most recent days that have one' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-weekly -d 'Keep the newest point of each of the N most recent ISO weeks that have one' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-monthly -d 'Keep the newest point of each of the N most recent months that have one' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l keep-yearly -d 'Keep the newest point of each of the N most recent years that have one' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l sync-to -d 'After each domain\'s backup (and prune), under its locks, sync its restore points to DEST: a directory or rclone:NAME:PATH (as `fi-backup sync --to`; the destination keeps every point it gets)' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l sync-bwlimit -d 'With --sync-to: rclone\'s bandwidth limit (10M, ...)' -r
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s c -l consolidate_only -l consolidate-only -d 'Consolidation only'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s C -l consolidate_and_snapshot -l consolidate-and-snapshot -d 'Snapshot, then consolidation'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s q -l quiesce -d 'Quiesce the guest\'s file systems (needs the qemu guest agent in the domain)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l live -d 'With -s: save memory while the guest runs (no long pause; larger file, memory a little later than the disks)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l quiesce-fallback -d 'With -q: a domain whose guest agent is missing or silent is snapshotted without quiesce (with a [WAR]) instead of failing'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s d -l debug -d 'Debug output ([DEB] lines; implies -v)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s r -l all_running -l all-running -d 'Back up all running domains (do not name domains)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s v -l verbose -d 'Verbose output ([VER] lines)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l log-timestamps -d 'Put an RFC 3339 time after the tag of each log line'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l dry-run -d 'Show what would be done, change nothing'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l json -d 'Print the run\'s report as one JSON document on stdout (logs stay on stderr)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l commit-all -d 'blockcommit everything, the top overlay included, into the base, and put the disk back on it (fi-backup.sh\'s shape). The next backup then copies the whole base again. Without it, -c and -C commit only the files below the newest overlay, and the next backup stays incremental'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l commit-through -d 'Let a blockcommit write through files fi-backup did not make (the user\'s own external snapshots) down to the base: each is named, and no longer holds the point in time it was made at. Without it, a commit writes into the newest such file and leaves the older ones'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -l pull-devices -d 'With -m blockpull: pull a disk standing on a block device (an LV, a LUN) into its file overlay anyway; the disk then runs on that file, which holds the whole device\'s data, and the device is left as it is, unused (without it, such a disk is refused)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -s V -l version -d 'Print version'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "list" -d 'List the restore points in a backup directory'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "restore" -d 'Restore a restore point into a directory (and define/start it)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "mount" -d 'Show a restore point\'s disks and file systems read-only under a directory, to fetch files without restoring a disk'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "umount" -d 'Undo fi-backup mount (also a killed one)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "verify" -d 'Check every restore point against its record'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "prune" -d 'Remove restore points by a retention policy, merging what kept points still need'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "sync" -d 'Replicate restore points to another disk or an rclone remote, by difference (only what is missing travels; records last)'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "adopt" -d 'Take fi-backup.sh\'s overlays (<image>.bimg-<timestamp>) in a domain\'s chain into fi-backup\'s ledger, so that consolidation deletes them'
complete -c fi-backup -n "__fish_fi_backup_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -l domain -d 'Only this domain' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -l connect -d 'libvirt connection URI' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -l json -d 'Print JSON'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand list" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l domain -d 'The domain whose restore point is restored' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l at -d 'The restore point (YYYYMMDD-HHMMSS); the latest when absent' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l target -d 'Where the disks (<target dev>.qcow2) and NAME.xml are written' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l onto -d 'Write disk DISK onto block device DEVICE (raw, the whole disk; the domain XML then names the device) instead of a file in the target; refused when the device is mounted, held, used by another domain, used by a running one, or smaller than the disk. Repeatable' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l settle -d 'Make domain NAME, instantly restored, stand alone: stream the backup\'s data into its own overlays (one disk at a time, journaled), so that it no longer reads the backup directory; running or shut off' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l define -d 'Define the restored domain in libvirt under this name (fresh UUID, no MACs); the domain\'s own name restores it in place (same UUID; needed to start from a memory state)' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l connect -d 'libvirt connection URI' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l flatten -d 'One standalone image per disk instead of a copied chain'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l instant -d 'Instant recovery: each disk becomes a new overlay in the target over the point\'s copies, which the domain reads in place (never writes): running in seconds whatever the disks\' size. QEMU then runs as root (it reads the backup directory\'s private files); --settle later makes the domain stand alone'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l start -d 'Start the defined domain, from the point\'s memory state when it has one and the restore is in place'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -l dry-run -d 'Check everything and say each step the restore would take (every file it would write, the domain it would define and start); write nothing. Not from a sync destination (its files would be fetched first)'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand restore" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -l domain -d 'The domain whose restore point is shown' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -l at -d 'The restore point (YYYYMMDD-HHMMSS); the latest when absent' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -l disk -d 'Only this disk (vda, ...); every disk of the point when absent' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand mount" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand umount" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand umount" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand umount" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -l domain -d 'Only this domain' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -l at -d 'Only this restore point (needs --domain)' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -l sample -d 'On a sync destination: read back only about this share of the files (as 10%), chosen at random; every record is still checked' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -l json -d 'Print the report as one JSON document on stdout'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand verify" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l domain -d 'Only this domain' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-last -d 'Keep the N newest restore points' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-hourly -d 'Keep the newest point of each of the N most recent hours that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-daily -d 'Keep the newest point of each of the N most recent days that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-weekly -d 'Keep the newest point of each of the N most recent ISO weeks that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-monthly -d 'Keep the newest point of each of the N most recent months that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l keep-yearly -d 'Keep the newest point of each of the N most recent years that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l connect -d 'libvirt connection URI' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l dry-run -d 'Print what would be kept, removed, merged and freed; change nothing'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -l json -d 'Print the report as one JSON document on stdout'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand prune" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -s b -l backup-dir -l backup_dir -d 'The backup directory given to -b' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l domain -d 'Only these domains (repeat it for several); every domain of the backup directory when absent' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l to -d 'Where to: a directory (another disk, an NFS mount) or rclone:NAME:PATH (a remote of your rclone configuration; a crypt remote encrypts). An empty one is made a destination; one that is not empty must be one already' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-last -d 'Keep the N newest restore points' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-hourly -d 'Keep the newest point of each of the N most recent hours that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-daily -d 'Keep the newest point of each of the N most recent days that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-weekly -d 'Keep the newest point of each of the N most recent ISO weeks that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-monthly -d 'Keep the newest point of each of the N most recent months that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l keep-yearly -d 'Keep the newest point of each of the N most recent years that have one' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l bwlimit -d 'Bandwidth limit of an rclone transfer (rclone\'s --bwlimit, as 10M or "08:00,512k 19:00,off")' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l metrics -d 'Write Prometheus metrics (last successful sync per domain) to FILE' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l dry-run -d 'Say what would be sent, dropped and deleted; change nothing'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -l json -d 'Print the report as one JSON document on stdout'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand sync" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand adopt" -l lock-dir -d 'Directory of the per-domain lock files' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand adopt" -l state-dir -d 'Directory of fi-backup\'s own state (the ledger of the overlays it created)' -r -F
complete -c fi-backup -n "__fish_fi_backup_using_subcommand adopt" -l connect -d 'libvirt connection URI' -r
complete -c fi-backup -n "__fish_fi_backup_using_subcommand adopt" -l dry-run -d 'Say what would be adopted, change nothing'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand adopt" -s h -l help -d 'Print help'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "list" -d 'List the restore points in a backup directory'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "restore" -d 'Restore a restore point into a directory (and define/start it)'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "mount" -d 'Show a restore point\'s disks and file systems read-only under a directory, to fetch files without restoring a disk'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "umount" -d 'Undo fi-backup mount (also a killed one)'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "verify" -d 'Check every restore point against its record'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "prune" -d 'Remove restore points by a retention policy, merging what kept points still need'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "sync" -d 'Replicate restore points to another disk or an rclone remote, by difference (only what is missing travels; records last)'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "adopt" -d 'Take fi-backup.sh\'s overlays (<image>.bimg-<timestamp>) in a domain\'s chain into fi-backup\'s ledger, so that consolidation deletes them'
complete -c fi-backup -n "__fish_fi_backup_using_subcommand help; and not __fish_seen_subcommand_from list restore mount umount verify prune sync adopt help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

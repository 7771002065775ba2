"""Other tools' images and formats: partclone and Clonezilla images, VM disks, booting
a snapshot in QEMU. Everything here reads or writes a format blockvault does not own,
and meets the repository through the pipeline's reading and writing paths."""

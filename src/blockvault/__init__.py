"""blockvault: disk imaging and backup."""

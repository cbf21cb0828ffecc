"""What every graph writer shares."""

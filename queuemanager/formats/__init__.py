"""Date formats of the console (FORMAT_MODULE_PATH): one time format, with seconds and the time zone, everywhere."""

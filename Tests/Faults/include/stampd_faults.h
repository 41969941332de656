// Nothing to call: the library works by replacing file calls when loaded with LD_PRELOAD
// (see stampd_faults.c).

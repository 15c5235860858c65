//! The quarantine record of topic `gps.fixes.rejected`: the original fix with its reason code.

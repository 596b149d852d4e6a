"""The worker: consumes alarms, keeps incidents, decides and carries out upgrades."""

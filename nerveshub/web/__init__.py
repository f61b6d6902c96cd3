"""The organizations' own web pages: accounts, members, devices, firmware,
deployments and the audit log, rendered by Django templates."""

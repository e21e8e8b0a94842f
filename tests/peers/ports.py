"""The port settings (ECPDS_<name>) that a whole system listens on: a test or a bench
running one beside others gives each a free port."""

# The portal's doors and the embedded MQTT broker.
PORTAL_PORTS = (
    "HTTPS_PORT",
    "FTP_PORT",
    "SFTP_PORT",
    "S3_PORT",
    "MQTT_PORT",
    "MQTTS_PORT",
    "MQTT_WS_PORT",
)
# What `ecpds up` adds: its Temporal dev server.
UP_PORTS = (*PORTAL_PORTS, "TEMPORAL_PORT", "TEMPORAL_UI_PORT")

"""chat-sim: the chat backend's Android app on the command line (HTTP to send, MQTT to receive)."""

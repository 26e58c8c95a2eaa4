"""Where readings go: Domoticz, the HTTP endpoint, ... Each sink knows nothing of protocols."""

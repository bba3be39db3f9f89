"""What the broker's auth checks need to know of devices (chatserver/broker_auth.py holds
the rules): registered in AccountsConfig.ready()."""

from accounts.models import Device
from chatserver.broker_access import parse_device_username
from chatserver.broker_auth import BrokerDevice


def device_for_broker(username: str) -> BrokerDevice | None:
    """The device of an MQTT username if it exists and its user is active: one query on
    the primary keys (device, then its user). Its MQTT password is derived here, an HMAC
    of the token hash, microseconds: no password hash on the broker's hot path."""
    device_id = parse_device_username(username)
    if device_id is None:
        return None
    row = Device.objects.filter(pk=device_id, user__is_active=True).values_list("user_id", "token_hash").first()
    if row is None:
        return None
    device = Device(pk=device_id, user_id=row[0], token_hash=row[1])
    return BrokerDevice(user_id=device.user_id, client_id=device.mqtt_client_id, password=device.mqtt_password)

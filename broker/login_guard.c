/*
 * login_guard: the broker side of the login limit, a Mosquitto 2.0 plugin loaded before
 * the dynamic-security plugin (broker/mosquitto.conf; built by chatserver/brokerconf.py).
 *
 * What it does. After `failures` refused logins of one account within `window` seconds,
 * every new CONNECT with that username is refused ("not authorised") for `cooldown`
 * seconds, whatever the password, without checking it. Only usernames starting with
 * `username_prefix` ("device-": the devices' accounts) are guarded, each on its own: a
 * user's other devices have accounts of their own (chatserver/broker_access.py DeviceAdd)
 * and are never affected, nor is the server's admin account (a lockout of it would stop
 * the relay and the workers from reconnecting: an outage anyone could cause).
 *
 * Why a plugin, and not a worker watching the broker's log. Measured on 2.0.11: the log of
 * a refused CONNECT, at every level up to debug and on `log_dest topic` as in the file,
 * names no account: "New connection from 127.0.0.1:36271 on port 1883." then
 * "Client <unknown> disconnected, not authorised." (and, at debug only, "Sending CONNACK
 * to 127.0.0.1 (0, 5)"). Neither the username nor the client id appears, and lines of
 * concurrent connections interleave, so no process outside the broker can tell which
 * account failed. Inside it, a plugin sees both: MOSQ_EVT_BASIC_AUTH gives the username
 * (and the client id) of every attempt, before dynsec checks the password, and the
 * refusal is the MOSQ_EVT_DISCONNECT that follows at once, in the same call of the
 * broker's single thread, of a client whose id the broker has cleared (an accepted
 * client keeps its id). Mosquitto 2.0.11 has no failed-login limit of its own.
 *
 * What the real device sees during a cooldown. Its live connection stays (only new
 * CONNECTs are refused; nothing is kicked, unlike dynsec's disableClient). A reconnect
 * is refused "not authorised" until the cooldown ends, then works and resumes the
 * persistent session: nothing is lost (the broker queues; the phone fetches `after=`
 * over HTTP in any case), pushes go to it meanwhile as to any phone without a live
 * connection, and its HTTP token works throughout. The cost: device usernames are
 * `device-<id>` (sequential, not secret), so anyone who can reach the broker can keep one
 * device from *reconnecting* by sending `failures` bad logins per cooldown. Accepted
 * because it reaches one device, and only while it reconnects.
 *
 * The real risk it addresses is small, and said so: a device's MQTT password is an
 * HMAC-SHA256 of its token's hash under SECRET_KEY (accounts.models.Device.mqtt_password),
 * 64 hex digits, 256 bits: no rate of guessing finds one. What the limit buys is that a
 * flood against one account stops costing the broker a password hash per attempt (the
 * guard refuses without hashing), and that a leaked or weak credential cannot be tried
 * at the broker's full speed (measured on loopback, one connection at a time: a wrong
 * password refused by dynsec 0.64 ms, ~1,500 a second per attacker connection; refused
 * by the guard 0.36 ms, without the password hash).
 * What it cannot catch: guesses spread over many accounts (each gets `failures` per
 * window; per-address limits belong in front of the broker, e.g. the firewall), and the
 * admin account (not guarded: its password is 32 random bytes unless the operator sets
 * a weak MQTT_ADMIN_PASSWORD).
 *
 * Memory: one entry per guarded username with a failure in the last window or under a
 * cooldown, at most `max_tracked` (past that, new names are not tracked: the guard fails
 * open, and says so in the log once a minute); stale entries are dropped on the broker's
 * tick. State is in memory only: a broker restart forgets every cooldown.
 *
 * Options (plugin_opt_*): failures (10), window (60), cooldown (60), username_prefix
 * ("device-"), max_tracked (100000).
 */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define BUCKETS 4096

struct entry {
	char *username;
	double window_start;
	int failures;
	double locked_until;
	struct entry *next;
};

static mosquitto_plugin_id_t *plugin_id;
static struct entry *table[BUCKETS];
static long tracked;
static int opt_failures = 10;
static double opt_window = 60, opt_cooldown = 60;
static const char *opt_prefix = "device-";
static char *prefix_copy;
static long opt_max_tracked = 100000;
/* The client whose CONNECT is being checked (set on BASIC_AUTH, in the broker's one
 * thread): its refusal is the DISCONNECT that follows. */
static const struct mosquitto *checking;
static double last_full_warning = -1e9, last_sweep;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long hash(const char *s)
{
	unsigned long h = 5381;
	while(*s) h = h * 33 + (unsigned char)*s++;
	return h % BUCKETS;
}

static bool guarded(const char *username)
{
	return username && strncmp(username, opt_prefix, strlen(opt_prefix)) == 0;
}

static struct entry *find(const char *username, bool create)
{
	struct entry **slot = &table[hash(username)], *e;
	for(e = *slot; e; e = e->next){
		if(strcmp(e->username, username) == 0) return e;
	}
	if(!create) return NULL;
	if(tracked >= opt_max_tracked){
		double t = now();
		if(t - last_full_warning >= 60){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "login_guard: %ld accounts tracked, the most allowed: "
					"failed logins of others are not limited", tracked);
			last_full_warning = t;
		}
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if(!e) return NULL;
	e->username = strdup(username);
	if(!e->username){
		free(e);
		return NULL;
	}
	e->next = *slot;
	*slot = e;
	tracked++;
	return e;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct entry *e;
	double t;

	checking = NULL;
	if(!guarded(ed->username)) return MOSQ_ERR_PLUGIN_DEFER;
	e = find(ed->username, false);
	t = now();
	if(e && e->locked_until > t){
		/* Refused here: not a failure of its own (the real device retrying during the
		 * cooldown must not make it longer). */
		return MOSQ_ERR_AUTH;
	}
	checking = ed->client;
	return MOSQ_ERR_PLUGIN_DEFER; /* dynsec decides */
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *username;
	struct entry *e;
	double t;

	if(ed->client != checking) return MOSQ_ERR_SUCCESS;
	checking = NULL;
	/* An accepted client has its id; a refused one has none any more. */
	if(mosquitto_client_id(ed->client) != NULL) return MOSQ_ERR_SUCCESS;
	username = mosquitto_client_username(ed->client);
	if(!guarded(username)) return MOSQ_ERR_SUCCESS;
	e = find(username, true);
	if(!e) return MOSQ_ERR_SUCCESS;
	t = now();
	if(e->failures == 0 || t - e->window_start > opt_window){
		e->window_start = t;
		e->failures = 0;
	}
	e->failures++;
	if(e->failures >= opt_failures){
		e->locked_until = t + opt_cooldown;
		e->failures = 0;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "login_guard: %d failed logins of %s within %.0f s: "
				"refused for %.0f s", opt_failures, username, opt_window, opt_cooldown);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	double t = now();
	int i;

	if(t - last_sweep < 10) return MOSQ_ERR_SUCCESS;
	last_sweep = t;
	for(i = 0; i < BUCKETS; i++){
		struct entry **slot = &table[i];
		while(*slot){
			struct entry *e = *slot;
			if(e->locked_until <= t && t - e->window_start > opt_window){
				*slot = e->next;
				free(e->username);
				free(e);
				tracked--;
			}else{
				slot = &e->next;
			}
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int number(const char *key, const char *value, double low, double *out)
{
	char *end;
	double v = strtod(value, &end);
	if(*value == '\0' || *end != '\0' || v < low){
		mosquitto_log_printf(MOSQ_LOG_ERR, "login_guard: %s must be a number >= %g, got '%s'", key, low, value);
		return MOSQ_ERR_INVAL;
	}
	*out = v;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	int i, rc;
	double v;

	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		rc = MOSQ_ERR_SUCCESS;
		if(!strcmp(key, "failures")){
			if(!(rc = number(key, value, 1, &v))) opt_failures = (int)v;
		}else if(!strcmp(key, "window")){
			rc = number(key, value, 0.001, &opt_window);
		}else if(!strcmp(key, "cooldown")){
			rc = number(key, value, 0.001, &opt_cooldown);
		}else if(!strcmp(key, "max_tracked")){
			if(!(rc = number(key, value, 1, &v))) opt_max_tracked = (long)v;
		}else if(!strcmp(key, "username_prefix")){
			prefix_copy = strdup(value);
			if(!prefix_copy) return MOSQ_ERR_NOMEM;
			opt_prefix = prefix_copy;
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "login_guard: unknown option '%s'", key);
			rc = MOSQ_ERR_INVAL;
		}
		if(rc) return rc;
	}
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL))) return rc;
	mosquitto_log_printf(MOSQ_LOG_INFO, "login_guard: %s* accounts refused for %.0f s after %d failed logins "
			"within %.0f s", opt_prefix, opt_cooldown, opt_failures, opt_window);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	int i;

	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	for(i = 0; i < BUCKETS; i++){
		while(table[i]){
			struct entry *e = table[i];
			table[i] = e->next;
			free(e->username);
			free(e);
		}
	}
	tracked = 0;
	free(prefix_copy);
	prefix_copy = NULL;
	opt_prefix = "device-";
	return MOSQ_ERR_SUCCESS;
}

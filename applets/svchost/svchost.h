/*
 * svchost.h: the interface between toolbox svchost and plugin services.
 *
 * A plugin is a shared library exporting an entry point (default name
 * "ServiceMain"):
 *
 *     #include "svchost.h"
 *     SVCHOST_PLUGIN;                     // defines SvchostPushServiceGlobals
 *
 *     static void *handle;
 *     static void handler(unsigned int control, void *context) {
 *         if (control == SERVICE_CONTROL_STOP) { ...tell the worker to stop... }
 *     }
 *     void ServiceMain(int argc, char **argv) {   // argv[0] is the service name
 *         handle = register_ctrl_handler(argv[0], handler, NULL);
 *         struct svchost_service_status st = { SERVICE_RUNNING, SERVICE_ACCEPT_STOP };
 *         set_service_status(handle, &st);
 *         ...work until stopped...
 *         st.current_state = SERVICE_STOPPED;
 *         set_service_status(handle, &st);
 *     }
 *
 * svchost calls SvchostPushServiceGlobals once when it loads the library
 * (before any ServiceMain), then runs each service's ServiceMain on a thread
 * of its own. The library is loaded once however many services name it.
 * Control handlers are called on a thread of svchost's, never concurrently
 * for one service. A service that accepts SERVICE_ACCEPT_PARAMCHANGE gets
 * SERVICE_CONTROL_PARAMCHANGE (reread your configuration) when svchost gets
 * SIGHUP or on `sc control NAME paramchange`.
 *
 * A service configured with "isolate = process" runs the same way in a
 * process of its own (the library is loaded there, once per such service),
 * so that abort(), exit() or a fatal signal in it ends only that service.
 */
#ifndef TOOLBOX_SVCHOST_H
#define TOOLBOX_SVCHOST_H

#ifdef __cplusplus
extern "C" {
#endif

#define SERVICE_STOPPED 1
#define SERVICE_START_PENDING 2
#define SERVICE_STOP_PENDING 3
#define SERVICE_RUNNING 4
#define SERVICE_CONTINUE_PENDING 5
#define SERVICE_PAUSE_PENDING 6
#define SERVICE_PAUSED 7

#define SERVICE_ACCEPT_STOP 0x1
#define SERVICE_ACCEPT_PAUSE_CONTINUE 0x2
#define SERVICE_ACCEPT_SHUTDOWN 0x4
#define SERVICE_ACCEPT_PARAMCHANGE 0x8

#define SERVICE_CONTROL_STOP 1
#define SERVICE_CONTROL_PAUSE 2
#define SERVICE_CONTROL_CONTINUE 3
#define SERVICE_CONTROL_INTERROGATE 4
#define SERVICE_CONTROL_SHUTDOWN 5
#define SERVICE_CONTROL_PARAMCHANGE 6

#define ERROR_SERVICE_SPECIFIC_ERROR 1066

struct svchost_service_status {
    unsigned int current_state;
    unsigned int controls_accepted;
    unsigned int win32_exit_code;
    unsigned int service_specific_exit_code;
    unsigned int checkpoint;
    unsigned int wait_hint;
};

typedef void (*svchost_ctrl_handler)(unsigned int control, void *context);

#define SVCHOST_GLOBALS_VERSION 1

struct svchost_globals {
    unsigned int version;
    void *host;
    void *(*register_ctrl_handler)(void *host, const char *service_name,
                                   svchost_ctrl_handler handler, void *context);
    int (*set_service_status)(void *host, void *handle,
                              const struct svchost_service_status *status);
};

/* Set by SvchostPushServiceGlobals; one copy per plugin library. */
static const struct svchost_globals *svchost_globals_ptr;

/*
 * Returns a handle for set_service_status, or NULL for an unknown name or a
 * service that is not running. The handle belongs to this run of the
 * service: it stops working once the service reports SERVICE_STOPPED, and a
 * restarted instance gets a new one from its own registration.
 */
static inline void *register_ctrl_handler(const char *service_name,
                                          svchost_ctrl_handler handler, void *context)
{
    return svchost_globals_ptr
        ? svchost_globals_ptr->register_ctrl_handler(svchost_globals_ptr->host,
                                                     service_name, handler, context)
        : (void *)0;
}

/*
 * Returns 1 on success, 0 on a bad status or handle; for a handle that is not
 * (or no longer) valid errno is EBADF, where Windows' SetServiceStatus fails
 * with ERROR_INVALID_HANDLE.
 */
static inline int set_service_status(void *handle, const struct svchost_service_status *status)
{
    return svchost_globals_ptr
        ? svchost_globals_ptr->set_service_status(svchost_globals_ptr->host, handle, status)
        : 0;
}

#define SVCHOST_PLUGIN \
    void SvchostPushServiceGlobals(const struct svchost_globals *globals) \
    { svchost_globals_ptr = globals; }

#ifdef __cplusplus
}
#endif

#endif

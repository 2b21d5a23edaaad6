// Node-RED settings for medpipe's dashboard. Everything a deployment
// changes comes from the environment:
//   PORT        HTTP port of the editor, the dashboard and /medpipe/devices (1880)
//   HOST        address to bind (0.0.0.0 in a container, 127.0.0.1 otherwise)
//   MQTT_HOST   the broker medpipe publishes to (flows.json reads it as ${MQTT_HOST})
//   MQTT_PORT   its port (1883)
//   MQTT_PREFIX medpipe's --prefix (Pico)
//   MQTT_USER, MQTT_PASSWORD  the broker's dashboard user (none: anonymous)
// and the alert and history settings listed in flows.json's tab description.
module.exports = {
    uiPort: process.env.PORT || 1880,
    uiHost: process.env.HOST || "127.0.0.1",
    flowFile: process.env.FLOW_FILE || "flows.json",
    flowFilePretty: true,
    // The dashboard's history, ECG samples, devices and alerts (with their
    // acknowledgements) are flow context in the "file" store: kept in
    // memory, written to <userDir>/context every 10 s and on shutdown, read
    // back at start, so a restart loses at most the last 10 s.
    contextStorage: {
        default: { module: "memory" },
        file: { module: "localfilesystem", config: { flushInterval: 10 } },
    },
    // No credentials are stored in flows.json; the broker has none by default.
    credentialSecret: false,
    // A closed network: no update checks, no telemetry, no tours.
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false },
    editorTheme: { projects: { enabled: false }, tours: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
};

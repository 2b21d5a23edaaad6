// Node-RED settings for medpipe's dashboard. Everything a deployment
// changes comes from the environment:
//   PORT        HTTP port of the editor, the dashboard and /medpipe/devices (1880)
//   HOST        address to bind (0.0.0.0 in a container, 127.0.0.1 otherwise)
//   MQTT_HOST   the broker medpipe publishes to (flows.json reads it as ${MQTT_HOST})
//   MQTT_PORT   its port (1883)
//   MQTT_PREFIX medpipe's --prefix (Pico)
module.exports = {
    uiPort: process.env.PORT || 1880,
    uiHost: process.env.HOST || "127.0.0.1",
    flowFile: process.env.FLOW_FILE || "flows.json",
    flowFilePretty: true,
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

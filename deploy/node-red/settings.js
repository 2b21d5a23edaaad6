// Node-RED settings for medpipe's dashboard. Everything a deployment
// changes comes from the environment; secrets come from files (NAME_FILE,
// as Docker and Kubernetes mount them) or, failing that, from NAME:
//   PORT        HTTP port of the editor, the dashboard and /medpipe/devices (1880)
//   HOST        address to bind (127.0.0.1 unless set; 0.0.0.0 needs the admin password)
//   FLOW_FILE   the flows (flows.json in the user dir); FLOWS_SEED copies a
//               shipped flows file there when it does not exist yet
//   MQTT_HOST   the broker medpipe publishes to (flows.json reads it as ${MQTT_HOST})
//   MQTT_PORT   its port (1883)
//   MQTT_PREFIX medpipe's --prefix (Pico)
//   MQTT_USER, MQTT_PASSWORD(_FILE)
//               the dashboard's MQTT account (read-only on the broker); set
//               as the credentials of every mqtt-broker node in the flows
//               (and, read from the file, as MQTT_PASSWORD for env.get)
//   NODE_RED_ADMIN_USER (admin), NODE_RED_ADMIN_PASSWORD(_FILE)
//               the editor's login; hashed with bcrypt at start. Without it
//               the editor is refused on any address but loopback.
//   NODE_RED_CREDENTIAL_SECRET(_FILE)
//               the key that encrypts flows_cred.json; generated into the
//               user dir (mode 0600) on first start when not given
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const bcrypt = require("bcryptjs"); // a dependency of node-red itself

// secret returns NAME's secret from the file NAME_FILE names, or NAME.
function secret(name) {
    const file = process.env[name + "_FILE"];
    if (file) {
        const v = fs.readFileSync(file, "utf8").trim();
        if (!v) {
            throw new Error(`${name}_FILE ${file} is empty`);
        }
        return v;
    }
    return (process.env[name] || "").trim();
}

// userDir is Node-RED's --userDir (or -u), else where Node-RED puts it.
function userDir() {
    const a = process.argv;
    for (let i = 0; i < a.length - 1; i++) {
        if (a[i] === "--userDir" || a[i] === "-u") {
            return path.resolve(a[i + 1]);
        }
    }
    return process.env.NODE_RED_HOME || path.join(require("os").homedir(), ".node-red");
}

function isLoopback(host) {
    return host === "127.0.0.1" || host === "::1" || host === "localhost";
}

const dir = userDir();
const host = process.env.HOST || "127.0.0.1";
const flowFile = process.env.FLOW_FILE || "flows.json";
const flowPath = path.resolve(dir, flowFile);

// The flows live in the user dir, owned by the user Node-RED runs as, so
// the editor can save them; a shipped copy seeds it once.
if (process.env.FLOWS_SEED && !fs.existsSync(flowPath)) {
    fs.copyFileSync(process.env.FLOWS_SEED, flowPath);
}

const adminUser = process.env.NODE_RED_ADMIN_USER || "admin";
const adminPassword = secret("NODE_RED_ADMIN_PASSWORD");
if (!adminPassword && !isLoopback(host)) {
    // The editor runs arbitrary code next to patient data: never open it.
    throw new Error(`medpipe: refusing to serve the Node-RED editor on ${host} without a login: set NODE_RED_ADMIN_PASSWORD_FILE (sh deploy/secrets/init.sh creates one)`);
}

let credentialSecret = secret("NODE_RED_CREDENTIAL_SECRET");
if (!credentialSecret) {
    const f = path.join(dir, ".credential-secret");
    if (!fs.existsSync(f)) {
        fs.writeFileSync(f, crypto.randomBytes(32).toString("hex"), { mode: 0o600, flag: "wx" });
    }
    credentialSecret = fs.readFileSync(f, "utf8").trim();
}

// The dashboard's MQTT account goes into flows_cred.json (encrypted the way
// Node-RED does it: aes-256-ctr, key sha256(credentialSecret)) for every
// mqtt-broker node of the flows, so flows.json holds no credential.
const mqttUser = process.env.MQTT_USER || "";
const mqttPassword = secret("MQTT_PASSWORD");
// Flows that connect dynamically read it with env.get("MQTT_PASSWORD").
process.env.MQTT_PASSWORD = mqttPassword;
if (mqttUser && fs.existsSync(flowPath)) {
    const key = crypto.createHash("sha256").update(credentialSecret).digest();
    const ext = path.extname(flowPath);
    const credPath = path.join(dir, path.basename(flowPath, ext) + "_cred" + ext);
    let creds = {};
    if (fs.existsSync(credPath)) {
        try {
            const enc = JSON.parse(fs.readFileSync(credPath, "utf8"))["$"];
            const d = crypto.createDecipheriv("aes-256-ctr", key, Buffer.from(enc.substring(0, 32), "hex"));
            creds = JSON.parse(d.update(enc.substring(32), "base64", "utf8") + d.final("utf8"));
        } catch (e) {
            // Another key or a damaged file: the brokers' entries are rewritten
            // below; anything else in it could not be read anyway.
            creds = {};
        }
    }
    for (const n of JSON.parse(fs.readFileSync(flowPath, "utf8"))) {
        if (n.type === "mqtt-broker") {
            creds[n.id] = Object.assign({}, creds[n.id], { user: mqttUser, password: mqttPassword });
        }
    }
    const iv = crypto.randomBytes(16);
    const c = crypto.createCipheriv("aes-256-ctr", key, iv);
    const out = { "$": iv.toString("hex") + c.update(JSON.stringify(creds), "utf8", "base64") + c.final("base64") };
    fs.writeFileSync(credPath, JSON.stringify(out), { mode: 0o600 });
}

module.exports = {
    uiPort: process.env.PORT || 1880,
    uiHost: host,
    flowFile: flowFile,
    flowFilePretty: true,
    // The dashboard's history, ECG samples, devices and alerts (with their
    // acknowledgements) are flow context in the "file" store: kept in
    // memory, written to <userDir>/context every 10 s and on shutdown, read
    // back at start, so a restart loses at most the last 10 s.
    contextStorage: {
        default: { module: "memory" },
        file: { module: "localfilesystem", config: { flushInterval: 10 } },
    },
    credentialSecret: credentialSecret,
    adminAuth: adminPassword ? {
        type: "credentials",
        users: [{ username: adminUser, password: bcrypt.hashSync(adminPassword, 10), permissions: "*" }],
    } : undefined,
    // A closed network: no update checks, no telemetry, no tours.
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false },
    editorTheme: { projects: { enabled: false }, tours: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
};

#!/usr/bin/env python3
"""Writes flows.json: medpipe's Node-RED flow and Dashboard 2.0 layout. Edit here (or in the
Node-RED editor, then export), run `python3 deploy/node-red/flows.py`; deploy_test.go checks the result."""
import json
F = "medpipe-flow"
nodes = []
def n(**kw):
    nodes.append(kw); return kw
n(id=F, type="tab", label="medpipe", disabled=False, info="Readings from medpipe's MQTT topics (<prefix>/<device>/...): devices are discovered from the topics, one is shown at a time.")
n(id="broker", type="mqtt-broker", name="medpipe broker", broker="${MQTT_HOST}", port="${MQTT_PORT}", clientid="", autoConnect=True, usetls=False, protocolVersion="4", keepalive="60", cleansession=True, autoUnsubscribe=True, birthTopic="", closeTopic="", willTopic="")
n(id="dash-base", type="ui-base", name="medpipe", path="/dashboard", appIcon="", includeClientData=True, acceptsClientConfig=["ui-notification", "ui-control"], showPathInSidebar=False, headerContent="page", navigationStyle="none", titleBarStyle="default", showReconnectNotification=True, notificationDisplayTime=1, showDisconnectNotification=True)
n(id="dash-theme", type="ui-theme", name="medpipe", colors={"surface": "#ffffff", "primary": "#0d74ce", "bgPage": "#f4f6f8", "groupBg": "#ffffff", "groupOutline": "#d9d9e0"}, sizes={"density": "default", "pagePadding": "12px", "groupGap": "12px", "groupBorderRadius": "6px", "widgetGap": "12px"})
n(id="dash-page", type="ui-page", name="Patients", ui="dash-base", path="/patients", icon="heart-pulse", layout="grid", theme="dash-theme", breakpoints=[{"name": "Default", "px": "0", "cols": "3"}, {"name": "Tablet", "px": "576", "cols": "6"}, {"name": "Small Desktop", "px": "768", "cols": "9"}, {"name": "Desktop", "px": "1024", "cols": "12"}], order=1, className="", visible="true", disabled="false")
def group(id, name, width, order):
    n(id=id, type="ui-group", name=name, page="dash-page", width=str(width), height="1", order=order, showTitle=True, className="", visible="true", disabled="false", groupType="default")
group("g-device", "Device", 3, 1)
group("g-vitals", "Vital signs", 9, 2)
group("g-motion", "Accelerometer", 6, 3)
group("g-internal", "Device temperatures", 6, 4)
group("g-fleet", "All devices", 12, 5)

ROUTE = r"""
// Topics: <prefix>/<device>/Physiological_Data/..., .../Internal_Device_Data/...
const prefix = env.get("MQTT_PREFIX") || "Pico";
const parts = msg.topic.split("/");
if (parts.length < 3 || parts[0] !== prefix) return null;
const id = parts[1];
const kind = parts.slice(2).join("/");
const devices = flow.get("devices") || {};
const isNew = !devices[id];
const d = devices[id] || (devices[id] = { id, readings: 0, lastSeen: 0 });
d.lastSeen = Date.now();
const value = parseFloat(msg.payload);
const out = [null, null, null, null, null, null];
switch (kind) {
case "Physiological_Data/Temperature": d.readings++; d.temp = value; break;
case "Internal_Device_Data/Temperature/MCU": d.mcu = value; break;
case "Internal_Device_Data/Temperature/MPU": d.mpu = value; break;
}
flow.set("devices", devices);
if (isNew) {
    if (!flow.get("selected")) flow.set("selected", id); // show the first device at once
    out[5] = { options: Object.keys(devices).sort().map(k => ({ label: k, value: k })), payload: flow.get("selected") };
}
if (id !== flow.get("selected") || isNaN(value)) return isNew ? out : null;
switch (kind) {
case "Physiological_Data/Temperature": out[0] = { payload: value, topic: id }; break;
case "Physiological_Data/Pulse_Signal": out[1] = { payload: value, topic: "pulse" }; break;
case "Physiological_Data/Accelerometer/x": out[2] = { payload: value, topic: "x" }; break;
case "Physiological_Data/Accelerometer/y": out[2] = { payload: value, topic: "y" }; break;
case "Physiological_Data/Accelerometer/z": out[2] = { payload: value, topic: "z" }; break;
case "Internal_Device_Data/Temperature/MCU": out[3] = { payload: value.toFixed(1) + " °C" }; break;
case "Internal_Device_Data/Temperature/MPU": out[4] = { payload: value.toFixed(1) + " °C" }; break;
}
return out;
"""
SELECT = r"""
// A device picked in the selector: show it, and clear the charts.
flow.set("selected", msg.payload);
return [{ payload: [] }, { payload: [] }];
"""
FLEET = r"""
// Every device seen, online when it sent within the last 10 s.
const now = Date.now();
const devices = Object.values(flow.get("devices") || {}).sort((a, b) => a.id.localeCompare(b.id));
msg.payload = devices.map(d => ({
    device: d.id,
    status: now - d.lastSeen < 10000 ? "online" : "offline",
    "last seen": new Date(d.lastSeen).toLocaleTimeString(),
    readings: d.readings,
    "temperature °C": d.temp === undefined ? "" : d.temp.toFixed(1) + (d.temp >= 38 ? " (fever)" : ""),
}));
return msg;
"""
n(id="mqtt-in", type="mqtt in", z=F, name="medpipe topics", topic="#", qos="1", datatype="utf8", broker="broker", nl=False, rap=True, rh=0, inputs=0, x=140, y=120, wires=[["route"]])
n(id="route", type="function", z=F, name="discover devices, route the selected one", func=ROUTE, outputs=6, timeout=0, noerr=0, initialize="", finalize="", libs=[], x=420, y=120,
  wires=[["gauge-temp"], ["chart-pulse"], ["chart-accel"], ["text-mcu"], ["text-mpu"], ["select-device"]])
n(id="select-device", type="ui-dropdown", z=F, group="g-device", name="device selector", label="Device", tooltip="", order=1, width="3", height="1", passthru=False, multiple=False, chips=False, clearable=False, options=[], payload="", topic="device", topicType="str", className="", typeIsComboBox=True, msgTrigger="onChange", x=760, y=300, wires=[["select"]])
n(id="select", type="function", z=F, name="select", func=SELECT, outputs=2, timeout=0, noerr=0, initialize="", finalize="", libs=[], x=930, y=300, wires=[["chart-pulse"], ["chart-accel"]])
n(id="gauge-temp", type="ui-gauge", z=F, name="body temperature", group="g-vitals", order=1, width="3", height="4", gtype="gauge-half", gstyle="rounded", title="Body temperature", alwaysShowTitle=True, floatingTitlePosition="top-left", units="°C", icon="thermometer", prefix="", suffix="°C", segments=[{"from": "34", "color": "#2e9e44"}, {"from": "37.5", "color": "#f4a300"}, {"from": "38", "color": "#d32f2f"}], min="34", max="42", sizeThickness=16, sizeGap=4, sizeKeyThickness=8, styleRounded=True, styleGlow=False, className="", value="payload", valueType="msg", x=780, y=60, wires=[])
def chart(id, name, group, order, width, label, ylabel, ymin, ymax, points):
    n(id=id, type="ui-chart", z=F, group=group, name=name, label=label, order=order, chartType="line", category="topic", categoryType="msg", xAxisLabel="", xAxisProperty="", xAxisPropertyType="timestamp", xAxisType="time", xAxisFormat="", xAxisFormatType="auto", xmin="", xmax="", yAxisLabel=ylabel, yAxisProperty="payload", yAxisPropertyType="msg", ymin=ymin, ymax=ymax, bins=10, action="append", stackSeries=False, pointShape="false", pointRadius=0, showLegend=True, removeOlder="30", removeOlderUnit="1", removeOlderPoints=str(points), colors=["#0095FF", "#FF0000", "#FF7F0E", "#2CA02C", "#A347E1", "#D62728", "#FF9896", "#9467BD", "#C5B0D5"], textColor=["#666666"], textColorDefault=True, gridColor=["#e5e5e5"], gridColorDefault=True, width=str(width), height="6", className="", interpolation="linear", x=780, y=0, wires=[[]])
chart("chart-pulse", "ECG / pulse", "g-vitals", 2, 6, "ECG / pulse signal", "mV", "", "", 600)
chart("chart-accel", "accelerometer", "g-motion", 1, 6, "Acceleration (x, y, z)", "g", "", "", 900)
def text(id, name, label, order):
    n(id=id, type="ui-text", z=F, group="g-internal", order=order, width="3", height="1", name=name, label=label, format="{{msg.payload}}", layout="row-spread", style=False, font="", fontSize=16, color="#717171", wrapText=False, className="", value="payload", valueType="msg", x=780, y=0, wires=[])
text("text-mcu", "MCU temperature", "MCU (RP2040)", 1)
text("text-mpu", "MPU temperature", "MPU6050", 2)
n(id="tick", type="inject", z=F, name="every 2 s", props=[{"p": "payload"}], repeat="2", crontab="", once=True, onceDelay="1", topic="", payload="", payloadType="date", x=150, y=420, wires=[["fleet"]])
n(id="fleet", type="function", z=F, name="fleet status", func=FLEET, outputs=1, timeout=0, noerr=0, initialize="", finalize="", libs=[], x=360, y=420, wires=[["table-fleet"]])
TABLE = """<template>
  <v-table density="compact" class="medpipe-devices">
    <thead><tr><th>Device</th><th>Status</th><th>Last seen</th><th>Readings</th><th>Temperature</th></tr></thead>
    <tbody>
      <tr v-for="d in msg.payload || []" :key="d.id">
        <td>{{ d.id }}</td>
        <td :style="{ color: d.online ? '#2e9e44' : '#d32f2f', fontWeight: 600 }">{{ d.online ? 'online' : 'offline' }}</td>
        <td>{{ d.lastSeen }}</td>
        <td>{{ d.readings }}</td>
        <td :style="{ color: d.temp >= 38 ? '#d32f2f' : 'inherit' }">{{ d.temp === undefined ? '' : d.temp.toFixed(1) + ' °C' }}</td>
      </tr>
    </tbody>
  </v-table>
</template>"""
n(id="table-fleet", type="ui-table", z=F, group="g-fleet", name="devices online / last seen", label="", order=1, width="12", height="0", maxrows=0, passthru=False, autocols=True, showSearch=True, deselect=True, selectionType="none", columns=[], mobileBreakpoint="sm", mobileBreakpointType="defaults", action="replace", className="", x=580, y=420, wires=[])
HTTP = r"""
// For monitoring and the end-to-end test: what Node-RED has received.
const now = Date.now();
msg.payload = { devices: Object.values(flow.get("devices") || {}).map(d => ({ id: d.id, readings: d.readings, online: now - d.lastSeen < 10000, lastSeen: new Date(d.lastSeen).toISOString() })) };
return msg;
"""
n(id="http-devices", type="http in", z=F, name="GET /medpipe/devices", url="/medpipe/devices", method="get", upload=False, swaggerDoc="", x=170, y=500, wires=[["http-devices-fn"]])
n(id="http-devices-fn", type="function", z=F, name="devices seen", func=HTTP, outputs=1, timeout=0, noerr=0, initialize="", finalize="", libs=[], x=400, y=500, wires=[["http-devices-out"]])
n(id="http-devices-out", type="http response", z=F, name="", statusCode="", headers={"content-type": "application/json"}, x=590, y=500, wires=[])

json.dump(nodes, open(__file__.replace("flows.py", "flows.json"), "w"), indent=2, ensure_ascii=False)


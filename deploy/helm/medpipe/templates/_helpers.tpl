{{/* Labels of every object. */}}
{{- define "medpipe.labels" -}}
app.kubernetes.io/name: medpipe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Selector of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "medpipe.selector" -}}
app.kubernetes.io/name: medpipe
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod security context of the restricted Pod Security Standard, for a numeric uid. */}}
{{- define "medpipe.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context of the restricted Pod Security Standard. */}}
{{- define "medpipe.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The MQTT broker publish and Node-RED use. */}}
{{- define "medpipe.mqttURL" -}}
{{- if .Values.mqtt.url -}}
{{ .Values.mqtt.url }}
{{- else -}}
tcp://{{ .Release.Name }}-mosquitto:1883
{{- end -}}
{{- end }}

{{/* One medpipe stage's Deployment: (dict "root" $ "component" "decrypt" "values" .Values.decrypt "args" (list ...) "replicas" true). */}}
{{- define "medpipe.stage" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $root.Release.Name }}-{{ .component }}
  labels:
    {{- include "medpipe.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if .replicas }}
  replicas: {{ .values.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "medpipe.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "medpipe.selector" . | nindent 8 }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.httpPort | quote }}
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      terminationGracePeriodSeconds: 30
      automountServiceAccountToken: false
      securityContext:
        {{- include "medpipe.podSecurity" 65532 | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
            - --nats-user
            - {{ .component }}
            - --nats-password-file
            - /etc/medpipe/nats/password
          envFrom:
            - configMapRef:
                name: {{ $root.Release.Name }}
          ports:
            {{- if eq .component "ingest" }}
            - name: devices
              containerPort: {{ $root.Values.ingest.devicePort }}
            {{- end }}
            - name: http
              containerPort: {{ $root.Values.httpPort }}
          # Liveness: the process serves. Readiness: NATS (and MQTT) are up;
          # a broker outage takes pods out of service without restarting them.
          livenessProbe:
            httpGet: { path: /livez, port: http }
            periodSeconds: 10
            failureThreshold: 6
          readinessProbe:
            httpGet: { path: /readyz, port: http }
            periodSeconds: 5
          securityContext:
            {{- include "medpipe.containerSecurity" . | nindent 12 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          volumeMounts:
            - { name: nats, mountPath: /etc/medpipe/nats, readOnly: true }
            - { name: tmp, mountPath: /tmp }
            {{- if eq .component "publish" }}
            - { name: mqtt, mountPath: /etc/medpipe/mqtt, readOnly: true }
            {{- end }}
      volumes:
        - name: nats
          secret:
            secretName: {{ $root.Values.nats.credentialsSecret }}
            defaultMode: 0440
            items:
              - { key: {{ .component }}, path: password }
        - name: tmp
          emptyDir: { sizeLimit: 64Mi }
        {{- if eq .component "publish" }}
        - name: mqtt
          secret:
            secretName: {{ $root.Values.mqtt.credentialsSecret }}
            defaultMode: 0440
            items:
              - { key: medpipe, path: password }
        {{- end }}
{{- end }}

{{/* Names ---------------------------------------------------------------- */}}

{{- define "podiam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-podiam, or the release name alone when it already says podiam. Leaves room for "-operator-tls". */}}
{{- define "podiam.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podiam.operator.fullname" -}}{{ include "podiam.fullname" . }}-operator{{- end -}}
{{- define "podiam.proxy.fullname" -}}{{ include "podiam.fullname" . }}-proxy{{- end -}}

{{- define "podiam.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "podiam.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "podiam.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "podiam.proxy.fullname" .) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* TLS Secret names: auto mode's (created by the operator) or the user's. */}}
{{- define "podiam.webhook.configuration" -}}{{ include "podiam.fullname" . }}-container-credentials{{- end -}}
{{- define "podiam.webhook.service" -}}{{ printf "%s-webhook" (include "podiam.operator.fullname" .) | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "podiam.tls.webhookSecret" -}}{{ printf "%s-webhook-tls" (include "podiam.fullname" .) }}{{- end -}}
{{/* The injection webhook is served and registered: on, and in secrets mode given its certificate. */}}
{{- define "podiam.webhook.enabled" -}}
{{- $w := .Values.containerCredentials.webhook -}}
{{- if and $w.enabled (or (eq .Values.tls.mode "auto") $w.tlsSecret) -}}true{{- end -}}
{{- end -}}
{{- define "podiam.tls.caSecret" -}}{{ default (printf "%s-ca" (include "podiam.fullname" .)) .Values.tls.auto.caSecret }}{{- end -}}
{{- define "podiam.tls.operatorSecret" -}}{{ default (printf "%s-operator-tls" (include "podiam.fullname" .)) .Values.tls.auto.operatorSecret }}{{- end -}}
{{- define "podiam.tls.proxySecret" -}}
{{- if eq .Values.tls.mode "secrets" -}}
{{- .Values.proxy.tlsSecret -}}
{{- else -}}
{{- default (printf "%s-proxy-tls" (include "podiam.fullname" .)) .Values.tls.auto.proxySecret -}}
{{- end -}}
{{- end -}}

{{/* The file names the proxy reads in its Secret: auto mode always writes tls.crt / tls.key / ca.crt. */}}
{{- define "podiam.proxy.certFile" -}}{{ if eq .Values.tls.mode "secrets" }}{{ .Values.proxy.tlsCerts.certFileName }}{{ else }}tls.crt{{ end }}{{- end -}}
{{- define "podiam.proxy.keyFile" -}}{{ if eq .Values.tls.mode "secrets" }}{{ .Values.proxy.tlsCerts.keyFileName }}{{ else }}tls.key{{ end }}{{- end -}}
{{- define "podiam.proxy.caFile" -}}{{ if eq .Values.tls.mode "secrets" }}{{ .Values.proxy.tlsCerts.caFileName }}{{ else }}ca.crt{{ end }}{{- end -}}

{{/* Labels ---------------------------------------------------------------- */}}

{{- define "podiam.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podiam
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator finds the proxy pods by these labels (its proxy selector), so they never change between releases. */}}
{{- define "podiam.proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podiam.name" . }}-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "podiam.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podiam.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "podiam.operator.labels" -}}
{{ include "podiam.labels" . }}
{{ include "podiam.operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "podiam.proxy.labels" -}}
{{ include "podiam.labels" . }}
{{ include "podiam.proxy.selectorLabels" . }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* Images ---------------------------------------------------------------- */}}

{{- define "podiam.image" -}}
{{- $tag := default .root.Chart.AppVersion (toString .image.tag) -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "podiam.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Kiam's log levels (warn) in each component's spelling. */}}
{{- define "podiam.logLevel" -}}
{{- $level := lower . -}}
{{- if eq $level "warn" }}warning{{ else }}{{ $level }}{{ end -}}
{{- end -}}

{{/* Kiam's extraEnv map as a container env list. */}}
{{- define "podiam.extraEnv" -}}
{{- range $name, $value := . }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "podiam.hostPathVolumes" -}}
{{- range . }}
- name: {{ .name }}
  hostPath:
    path: {{ .hostPath }}
    {{- with .type }}
    type: {{ . }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "podiam.hostPathMounts" -}}
{{- range . }}
- name: {{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: {{ ternary .readOnly true (hasKey . "readOnly") }}
{{- end }}
{{- end -}}

{{/* Checks the schema cannot express, with messages that say what to do. */}}
{{- define "podiam.validate" -}}
{{- if or .Values.agent .Values.server -}}
{{- fail "this values file is Kiam's: podiam calls agent: proxy: and server: operator: (e.g. agent.host.interface is proxy.host.interface, server.assumeRoleArn is operator.assumeRoleArn); see the migration table in the README" -}}
{{- end -}}
{{- if eq .Values.tls.mode "secrets" -}}
{{- if not (and .Values.operator.tlsSecret .Values.proxy.tlsSecret) -}}
{{- fail "tls.mode=secrets needs operator.tlsSecret (the guide's kiam-server-tls) and proxy.tlsSecret (kiam-agent-tls): the Secrets holding your certificates" -}}
{{- end -}}
{{- else -}}
{{- if or .Values.operator.tlsSecret .Values.proxy.tlsSecret -}}
{{- fail "operator.tlsSecret / proxy.tlsSecret are used only with tls.mode=secrets; set tls.mode=secrets to use your own certificates, or remove them to let the operator issue its own (tls.mode=auto)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.proxy.host.iptables .Values.proxy.host.cleanupIptables -}}
{{- fail "proxy.host.cleanupIptables removes the rule that proxy.host.iptables installs: set proxy.host.iptables=false with it (before helm uninstall)" -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) -}}
{{- fail "operator.peering.enabled=false runs each replica standalone: with operator.replicas > 1 they would all act at once; keep peering on or use 1 replica" -}}
{{- end -}}
{{- $ports := list (int .Values.proxy.host.port) (int .Values.proxy.controlPort) (int .Values.proxy.healthPort) -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail "proxy.host.port, proxy.controlPort and proxy.healthPort must differ" -}}
{{- end -}}
{{- if eq (int .Values.operator.ports.liveness) (int .Values.operator.ports.metrics) -}}
{{- fail "operator.ports.liveness and operator.ports.metrics must differ" -}}
{{- end -}}
{{- if and .Values.operator.useHostNetwork .Values.operator.networkPolicy.enabled -}}
{{- fail "operator.networkPolicy cannot protect the operator on the host network (operator.useHostNetwork): a NetworkPolicy does not select host-network pods; its listeners bind the node's IP, so restrict that port on the node instead" -}}
{{- end -}}
{{- $w := .Values.containerCredentials.webhook -}}
{{- if and $w.enabled (eq .Values.tls.mode "secrets") $w.tlsSecret (not $w.caBundle) -}}
{{- fail "containerCredentials.webhook.tlsSecret needs containerCredentials.webhook.caBundle: the API server trusts the webhook's certificate through it (the base64 of the PEM CA that signed it)" -}}
{{- end -}}
{{- if and $w.enabled (has (int $w.port) (list (int .Values.operator.ports.liveness) (int .Values.operator.ports.metrics))) -}}
{{- fail "containerCredentials.webhook.port must differ from operator.ports.liveness and operator.ports.metrics" -}}
{{- end -}}
{{- if and $w.enabled .Values.operator.useHostNetwork (has (int $w.port) (append $ports 8186)) -}}
{{- fail (printf "containerCredentials.webhook.port (%d) is also a proxy port: with operator.useHostNetwork both listen on the node's addresses; pick another port" (int $w.port)) -}}
{{- end -}}
{{- if .Values.operator.useHostNetwork -}}
{{- range $name, $port := .Values.operator.ports -}}
{{- if has (int $port) $ports -}}
{{- fail (printf "operator.ports.%s (%d) is also a proxy port (proxy.host.port, proxy.controlPort, proxy.healthPort): with operator.useHostNetwork both listen on the node's addresses; pick another port" $name (int $port)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The proxy's iptables flavour: the image puts iptables-legacy first on PATH under /opt/podiam/iptables-legacy. */}}
{{- define "podiam.proxy.iptablesEnv" -}}
{{- if . }}
- name: PATH
  value: /opt/podiam/iptables-legacy:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{{- end }}
{{- end -}}

{{/*
The proxy container's security context, unless proxy.securityContext replaces it.
- no iptables: user 10001, no capabilities at all.
- nft: user 10001; NET_ADMIN only in the bounding set. The image gives the
  iptables binary (xtables-nft-multi) cap_net_admin as a file capability, so
  iptables alone holds it while it runs, never the Python process that
  answers pods. File capabilities take effect only without no_new_privs,
  hence allowPrivilegeEscalation: true; it grants nothing beyond that one
  bounded capability (no setuid binaries in the image, all else dropped).
- legacy: user 0 (kube-proxy's /run/xtables.lock is root's, mode 0600) with
  every capability dropped but NET_ADMIN and NET_RAW (legacy iptables opens
  a raw socket).
*/}}
{{- define "podiam.proxy.securityContext" -}}
{{- if .values.securityContext -}}
{{ toYaml .values.securityContext }}
{{- else if and .iptables .legacy -}}
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add: [NET_ADMIN, NET_RAW]
{{- else if .iptables -}}
runAsUser: 10001
runAsGroup: 10001
runAsNonRoot: true
allowPrivilegeEscalation: true
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add: [NET_ADMIN]
{{- else -}}
runAsUser: 10001
runAsGroup: 10001
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
{{- end -}}

{{/*
Expand the name of the chart.
*/}}
{{- define "hubspot-token-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "hubspot-token-broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "hubspot-token-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "hubspot-token-broker.labels" -}}
helm.sh/chart: {{ include "hubspot-token-broker.chart" . }}
{{ include "hubspot-token-broker.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: every pod of the release (the broker and the migration job). Never the
chart or app version, which change on upgrade while selectors are immutable.
*/}}
{{- define "hubspot-token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubspot-token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the broker pods only: the Deployment, Service, PDB and ServiceMonitor use
these, so the migration job's pod never receives traffic.
*/}}
{{- define "hubspot-token-broker.serverSelectorLabels" -}}
{{ include "hubspot-token-broker.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "hubspot-token-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hubspot-token-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: a digest wins over a tag; the tag defaults to the appVersion.
*/}}
{{- define "hubspot-token-broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Service Account token is mounted only for Vault's Kubernetes auth.
*/}}
{{- define "hubspot-token-broker.automountToken" -}}
{{- or (eq .Values.vault.auth.method "kubernetes") .Values.workloadIdentity.tokenReview.enabled }}
{{- end }}

{{/*
BROKER_JWT_ISSUERS as JSON: the cluster's TokenReview (the pod's own token and CA) and the
JWKS issuers. Empty when neither is configured.
*/}}
{{- define "hubspot-token-broker.jwtIssuers" -}}
{{- $issuers := list }}
{{- with .Values.workloadIdentity.tokenReview }}
{{- if .enabled }}
{{- $sa := "/var/run/secrets/kubernetes.io/serviceaccount" }}
{{- $issuers = append $issuers (dict "issuer" .issuer "audience" .audience "tokenreview_url" "https://kubernetes.default.svc" "ca_file" (printf "%s/ca.crt" $sa) "token_file" (printf "%s/token" $sa) "review_rate" .reviewRate) }}
{{- end }}
{{- end }}
{{- range .Values.workloadIdentity.jwksIssuers }}
{{- $issuers = append $issuers (dict "issuer" .issuer "audience" .audience "jwks_url" .jwksUrl) }}
{{- end }}
{{- if $issuers }}{{ toJson $issuers }}{{ end }}
{{- end }}

{{/*
Non-secret BROKER_* settings, as a YAML map of strings: the ConfigMap's data, and the
migration job's env (it runs before the ConfigMap exists on a first install).
*/}}
{{- define "hubspot-token-broker.configData" -}}
{{- $c := .Values.config }}
{{- $v := .Values.vault -}}
BROKER_HOST: "0.0.0.0"
BROKER_PORT: {{ .Values.containerPort | quote }}
BROKER_LOG_LEVEL: {{ $c.logLevel | quote }}
BROKER_LOG_FORMAT: {{ $c.logFormat | quote }}
{{- with $c.defaultApp }}
BROKER_DEFAULT_APP: {{ . | quote }}
{{- end }}
BROKER_MIN_TTL_DEFAULT: {{ $c.minTtlDefault | quote }}
BROKER_MIN_TTL_MAX: {{ $c.minTtlMax | quote }}
BROKER_LEASE_SECONDS: {{ $c.leaseSeconds | quote }}
BROKER_HUBSPOT_API_URL: {{ $c.hubspotApiUrl | quote }}
BROKER_HUBSPOT_APP_URL: {{ $c.hubspotAppUrl | quote }}
BROKER_REDIS_PREFIX: {{ $c.redisPrefix | quote }}
BROKER_DATABASE_POOL_MIN: {{ $c.databasePoolMin | quote }}
BROKER_DATABASE_POOL_MAX: {{ $c.databasePoolMax | quote }}
BROKER_DB_TIMEOUT: {{ $c.dbTimeout | quote }}
BROKER_REDIS_TIMEOUT: {{ $c.redisTimeout | quote }}
BROKER_VAULT_TIMEOUT: {{ $c.vaultTimeout | quote }}
BROKER_HUBSPOT_TIMEOUT: {{ $c.hubspotTimeout | quote }}
BROKER_SECRET_CACHE_SECONDS: {{ $c.secretCacheSeconds | quote }}
BROKER_CALLER_CACHE_SECONDS: {{ $c.callerCacheSeconds | quote }}
{{- with include "hubspot-token-broker.jwtIssuers" . }}
BROKER_JWT_ISSUERS: {{ . | quote }}
{{- end }}
BROKER_AUTH_LOOKUP_RATE: {{ $c.authLookupRate | quote }}
BROKER_INSTALL_STATE_TTL: {{ $c.installStateTtl | quote }}
BROKER_INSTALL_LINKS_REQUIRED: {{ $c.installLinksRequired | quote }}
BROKER_INSTALL_LINK_TTL: {{ $c.installLinkTtl | quote }}
BROKER_AUDIT_RETENTION_DAYS: {{ $c.auditRetentionDays | quote }}
BROKER_EVENTS_RETENTION_DAYS: {{ $c.eventsRetentionDays | quote }}
BROKER_JOURNAL_RETENTION_HOURS: {{ $c.journalRetentionHours | quote }}
BROKER_RETENTION_INTERVAL: {{ $c.retentionInterval | quote }}
BROKER_VAULT_ADDR: {{ $v.address | quote }}
BROKER_VAULT_AUTH: {{ $v.auth.method | quote }}
{{- if eq $v.auth.method "kubernetes" }}
BROKER_VAULT_K8S_ROLE: {{ required "vault.auth.kubernetesRole is required for kubernetes auth" $v.auth.kubernetesRole | quote }}
{{- end }}
{{- if eq $v.auth.method "approle" }}
BROKER_VAULT_ROLE_ID: {{ required "vault.auth.approleRoleId is required for approle auth" $v.auth.approleRoleId | quote }}
{{- end }}
BROKER_VAULT_KV_MOUNT: {{ $v.kvMount | quote }}
BROKER_VAULT_KV_PREFIX: {{ $v.kvPrefix | quote }}
BROKER_VAULT_TRANSIT_MOUNT: {{ $v.transitMount | quote }}
BROKER_VAULT_TRANSIT_KEY: {{ $v.transitKey | quote }}
{{- end }}

{{/*
The Secret keys the broker reads for the configured Vault auth method.
*/}}
{{- define "hubspot-token-broker.secretKeys" -}}
- BROKER_DATABASE_URL
- BROKER_REDIS_URL
{{- if eq .Values.vault.auth.method "token" }}
- BROKER_VAULT_TOKEN
{{- else if eq .Values.vault.auth.method "approle" }}
- BROKER_VAULT_SECRET_ID
{{- end }}
{{- end }}

{{/*
The chart-managed Secret's data (when secrets.existingSecret is empty).
*/}}
{{- define "hubspot-token-broker.secretData" -}}
{{- $s := .Values.secrets -}}
BROKER_DATABASE_URL: {{ $s.databaseUrl | quote }}
BROKER_REDIS_URL: {{ $s.redisUrl | quote }}
{{- if eq .Values.vault.auth.method "token" }}
BROKER_VAULT_TOKEN: {{ $s.vaultToken | quote }}
{{- else if eq .Values.vault.auth.method "approle" }}
BROKER_VAULT_SECRET_ID: {{ $s.vaultSecretId | quote }}
{{- end }}
{{- end }}

{{/*
env entries reading every secret setting from the Secret named by the argument.
Usage: include "hubspot-token-broker.secretEnv" (list . $secretName)
*/}}
{{- define "hubspot-token-broker.secretEnv" -}}
{{- $root := index . 0 }}
{{- $secretName := index . 1 }}
{{- range (include "hubspot-token-broker.secretKeys" $root | fromYamlArray) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ . }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the broker pods read.
*/}}
{{- define "hubspot-token-broker.secretName" -}}
{{- default (include "hubspot-token-broker.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Name of the Secret the migration job reads: the existing one, or a hook copy of the chart's
(the chart's own Secret does not exist yet when a pre-install hook runs).
*/}}
{{- define "hubspot-token-broker.migrationSecretName" -}}
{{- default (printf "%s-migrate" (include "hubspot-token-broker.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The pod's /tmp: the root filesystem is read-only.
*/}}
{{- define "hubspot-token-broker.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/*
NetworkPolicy peers from a list of {namespaceLabels, podLabels}: both given means those pods
in those namespaces; only namespaceLabels, any pod there; only podLabels, those pods in the
release's namespace.
*/}}
{{- define "hubspot-token-broker.peers" -}}
{{- $peers := list }}
{{- range . }}
{{- $peer := dict }}
{{- with .namespaceLabels }}
{{- $_ := set $peer "namespaceSelector" (dict "matchLabels" .) }}
{{- end }}
{{- with .podLabels }}
{{- $_ := set $peer "podSelector" (dict "matchLabels" .) }}
{{- end }}
{{- $peers = append $peers $peer }}
{{- end }}
{{- toYaml $peers }}
{{- end }}

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
The Service Account token is mounted only for Vault's Kubernetes auth and TokenReview.
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
Where the chart mounts files the broker reads (read-only volumes; the root filesystem is
read-only too). Directories, never subPath mounts, so rotated Secrets and ConfigMaps reach
the pod.
*/}}
{{- define "hubspot-token-broker.tlsDir" -}}/etc/hubspot-token-broker/tls{{- end }}
{{- define "hubspot-token-broker.vaultCaDir" -}}/etc/hubspot-token-broker/vault-ca{{- end }}
{{- define "hubspot-token-broker.caBundleDir" -}}/etc/hubspot-token-broker/ca-bundle{{- end }}

{{/*
Non-secret BROKER_* settings, as a YAML map of strings: the ConfigMap's data, and the
migration job's env (it runs before the ConfigMap exists on a first install).
*/}}
{{- define "hubspot-token-broker.configData" -}}
{{- $c := .Values.config }}
{{- $v := .Values.vault }}
{{- $w := .Values.webhooks -}}
BROKER_HOST: "0.0.0.0"
BROKER_PORT: {{ .Values.containerPort | quote }}
BROKER_PUBLIC_HOST: "0.0.0.0"
BROKER_PUBLIC_PORT: {{ .Values.publicContainerPort | quote }}
{{- if .Values.tls.enabled }}
BROKER_TLS_CERT_FILE: {{ printf "%s/tls.crt" (include "hubspot-token-broker.tlsDir" .) | quote }}
BROKER_TLS_KEY_FILE: {{ printf "%s/tls.key" (include "hubspot-token-broker.tlsDir" .) | quote }}
{{- end }}
BROKER_TRUSTED_PROXIES: {{ join "," $c.trustedProxies | quote }}
BROKER_DRAIN_SECONDS: {{ $c.drainSeconds | quote }}
BROKER_SHUTDOWN_TIMEOUT: {{ $c.shutdownTimeout | quote }}
BROKER_PREWARM_PORTALS: {{ $c.prewarmPortals | quote }}
BROKER_PREWARM_SECONDS: {{ $c.prewarmSeconds | quote }}
BROKER_LOG_LEVEL: {{ $c.logLevel | quote }}
BROKER_LOG_FORMAT: {{ $c.logFormat | quote }}
BROKER_DEFAULT_APP: {{ $c.defaultApp | quote }}
BROKER_MIN_TTL_DEFAULT: {{ $c.minTtlDefault | quote }}
BROKER_MIN_TTL_MAX: {{ $c.minTtlMax | quote }}
BROKER_LEASE_SECONDS: {{ $c.leaseSeconds | quote }}
BROKER_HUBSPOT_API_URL: {{ $c.hubspotApiUrl | quote }}
BROKER_HUBSPOT_APP_URL: {{ $c.hubspotAppUrl | quote }}
{{- if include "hubspot-token-broker.fileSourceName" .Values.caBundle }}
BROKER_CA_BUNDLE: {{ printf "%s/ca.crt" (include "hubspot-token-broker.caBundleDir" .) | quote }}
{{- end }}
BROKER_REDIS_PREFIX: {{ $c.redisPrefix | quote }}
BROKER_DATABASE_POOL_MIN: {{ $c.databasePoolMin | quote }}
BROKER_DATABASE_POOL_MAX: {{ $c.databasePoolMax | quote }}
BROKER_DB_TIMEOUT: {{ $c.dbTimeout | quote }}
BROKER_REDIS_TIMEOUT: {{ $c.redisTimeout | quote }}
BROKER_VAULT_TIMEOUT: {{ $c.vaultTimeout | quote }}
BROKER_HUBSPOT_TIMEOUT: {{ $c.hubspotTimeout | quote }}
BROKER_SECRET_CACHE_SECONDS: {{ $c.secretCacheSeconds | quote }}
BROKER_CALLER_CACHE_SECONDS: {{ $c.callerCacheSeconds | quote }}
BROKER_CALLER_RATE: {{ $c.callerRate | quote }}
BROKER_GATEWAY_MAX_BODY: {{ $c.gatewayMaxBody | int64 | quote }}
BROKER_GATEWAY_TIMEOUT: {{ $c.gatewayTimeout | quote }}
BROKER_BUDGET_PER_TEN_SECONDS: {{ $c.budgetPerTenSeconds | quote }}
BROKER_BUDGET_PER_DAY: {{ $c.budgetPerDay | quote }}
BROKER_BUDGET_MAX_WAIT: {{ $c.budgetMaxWait | quote }}
BROKER_BUDGET_QUEUE: {{ $c.budgetQueue | quote }}
{{- with include "hubspot-token-broker.jwtIssuers" . }}
BROKER_JWT_ISSUERS: {{ . | quote }}
{{- end }}
BROKER_AUTH_LOOKUP_RATE: {{ $c.authLookupRate | quote }}
BROKER_INSTALL_STATE_TTL: {{ $c.installStateTtl | quote }}
BROKER_INSTALL_LINKS_REQUIRED: {{ $c.installLinksRequired | quote }}
BROKER_INSTALL_LINK_TTL: {{ $c.installLinkTtl | quote }}
BROKER_MARKETPLACE_EXCHANGE_RATE: {{ $c.marketplaceExchangeRate | quote }}
BROKER_RETURN_TO_ORIGINS: {{ join "," $c.returnToOrigins | quote }}
BROKER_REFRESHER_ENABLED: {{ $c.refresherEnabled | quote }}
BROKER_REFRESHER_BATCH: {{ $c.refresherBatch | quote }}
BROKER_REFRESHER_CONCURRENCY: {{ $c.refresherConcurrency | quote }}
BROKER_REFRESHER_INTERVAL: {{ $c.refresherInterval | quote }}
BROKER_REFRESH_RATE_PER_APP: {{ $c.refreshRatePerApp | quote }}
BROKER_REFRESH_RATE_MIN: {{ $c.refreshRateMin | quote }}
BROKER_REFRESH_RATE_MAX: {{ $c.refreshRateMax | quote }}
BROKER_REFRESH_RATE_STEP: {{ $c.refreshRateStep | quote }}
BROKER_INVALIDATION_POLL_SECONDS: {{ $c.invalidationPollSeconds | quote }}
BROKER_WEBHOOK_TIMEOUT: {{ $w.timeout | quote }}
BROKER_WEBHOOK_BATCH: {{ $w.batch | quote }}
BROKER_WEBHOOK_INTERVAL: {{ $w.interval | quote }}
BROKER_WEBHOOK_BACKOFF_BASE: {{ $w.backoffBase | quote }}
BROKER_WEBHOOK_BACKOFF_CAP: {{ $w.backoffCap | quote }}
BROKER_WEBHOOK_STUCK_AFTER: {{ $w.stuckAfter | quote }}
BROKER_AUDIT_RETENTION_DAYS: {{ $c.auditRetentionDays | quote }}
BROKER_EVENTS_RETENTION_DAYS: {{ $c.eventsRetentionDays | quote }}
BROKER_JOURNAL_RETENTION_HOURS: {{ $c.journalRetentionHours | quote }}
BROKER_RETENTION_INTERVAL: {{ $c.retentionInterval | quote }}
{{- $sso := .Values.sso }}
{{- if $sso.enabled }}
BROKER_OIDC_ISSUER: {{ required "sso.issuer is required with sso.enabled" $sso.issuer | quote }}
BROKER_OIDC_CLIENT_ID: {{ required "sso.clientId is required with sso.enabled" $sso.clientId | quote }}
BROKER_OIDC_REDIRECT_URI: {{ $sso.redirectUri | quote }}
BROKER_OIDC_ROLES: {{ required "sso.roles needs at least one group with sso.enabled" (include "hubspot-token-broker.groupMap" $sso.roles) | quote }}
BROKER_OIDC_APPS: {{ include "hubspot-token-broker.groupMap" $sso.apps | quote }}
{{- else }}
{{- /* Off: empty, so the broker's own default (no SSO) applies. */}}
BROKER_OIDC_ISSUER: ""
BROKER_OIDC_CLIENT_ID: ""
BROKER_OIDC_REDIRECT_URI: ""
BROKER_OIDC_ROLES: ""
BROKER_OIDC_APPS: ""
{{- end }}
BROKER_OIDC_SCOPES: {{ $sso.scopes | quote }}
BROKER_OIDC_GROUPS_CLAIM: {{ $sso.groupsClaim | quote }}
BROKER_ADMIN_KEY_LOGIN: {{ $sso.keyLogin | quote }}
BROKER_VAULT_ADDR: {{ $v.address | quote }}
BROKER_VAULT_AUTH: {{ $v.auth.method | quote }}
{{- if eq $v.auth.method "kubernetes" }}
BROKER_VAULT_K8S_ROLE: {{ required "vault.auth.kubernetesRole is required for kubernetes auth" $v.auth.kubernetesRole | quote }}
BROKER_VAULT_K8S_JWT_PATH: {{ $v.auth.kubernetesJwtPath | quote }}
{{- end }}
{{- if eq $v.auth.method "approle" }}
BROKER_VAULT_ROLE_ID: {{ required "vault.auth.approleRoleId is required for approle auth" $v.auth.approleRoleId | quote }}
{{- end }}
{{- if include "hubspot-token-broker.fileSourceName" $v.caCert }}
BROKER_VAULT_CACERT: {{ printf "%s/ca.crt" (include "hubspot-token-broker.vaultCaDir" .) | quote }}
{{- end }}
BROKER_VAULT_KV_MOUNT: {{ $v.kvMount | quote }}
BROKER_VAULT_KV_PREFIX: {{ $v.kvPrefix | quote }}
BROKER_VAULT_TRANSIT_MOUNT: {{ $v.transitMount | quote }}
BROKER_VAULT_TRANSIT_KEY: {{ $v.transitKey | quote }}
BROKER_VAULT_SIGNING_KEY_PREFIX: {{ $v.signingKeyPrefix | quote }}
{{- end }}

{{/*
Settings naming files only the server reads (TLS for its listeners, CAs for Vault and
outgoing HTTPS): the migration job leaves them out, so it needs none of those mounts
(`broker migrate` talks to PostgreSQL only, and cert-manager's Secret may not exist yet when
the pre-install hook runs).
*/}}
{{- define "hubspot-token-broker.serverOnlySettings" -}}
- BROKER_TLS_CERT_FILE
- BROKER_TLS_KEY_FILE
- BROKER_VAULT_CACERT
- BROKER_CA_BUNDLE
{{- end }}

{{/*
The name of a {configMap, secret, key} file source, or empty when it names neither; fails
when it names both.
*/}}
{{- define "hubspot-token-broker.fileSourceName" -}}
{{- if and .configMap .secret }}
{{- fail (printf "a CA bundle comes from a ConfigMap or a Secret, not both (configMap %q, secret %q)" .configMap .secret) }}
{{- end }}
{{- .configMap | default .secret }}
{{- end }}

{{/*
A read-only volume of one key of a {configMap, secret, key} file source, as ca.crt.
Usage: include "hubspot-token-broker.fileSourceVolume" (list "volume-name" $source)
*/}}
{{- define "hubspot-token-broker.fileSourceVolume" -}}
{{- $name := index . 0 }}
{{- $source := index . 1 -}}
- name: {{ $name }}
  {{- if $source.configMap }}
  configMap:
    name: {{ $source.configMap }}
  {{- else }}
  secret:
    secretName: {{ $source.secret }}
  {{- end }}
    items:
      - key: {{ $source.key }}
        path: ca.crt
{{- end }}

{{/*
A {group: [items]} map as the broker's GROUP=ITEM+ITEM,GROUP=... (BROKER_OIDC_ROLES, _APPS).
*/}}
{{- define "hubspot-token-broker.groupMap" -}}
{{- $entries := list }}
{{- range $group, $items := . }}
{{- $entries = append $entries (printf "%s=%s" $group (join "+" $items)) }}
{{- end }}
{{- join "," $entries }}
{{- end }}

{{/*
The secret settings the broker reads for the configured Vault auth method and features.
*/}}
{{- define "hubspot-token-broker.secretKeys" -}}
- BROKER_DATABASE_URL
- BROKER_REDIS_URL
{{- if eq .Values.vault.auth.method "token" }}
- BROKER_VAULT_TOKEN
{{- else if eq .Values.vault.auth.method "approle" }}
- BROKER_VAULT_SECRET_ID
{{- end }}
{{- if .Values.webhooks.enabled }}
- BROKER_WEBHOOK_URLS
- BROKER_WEBHOOK_SECRET
{{- end }}
{{- if .Values.sso.enabled }}
- BROKER_OIDC_CLIENT_SECRET
{{- end }}
{{- end }}

{{/*
The chart-managed Secret's data (when secrets.existingSecret is empty): every secret setting
not taken from secrets.valueFrom.
*/}}
{{- define "hubspot-token-broker.secretData" -}}
{{- $s := .Values.secrets }}
{{- $fromValues := dict "BROKER_DATABASE_URL" $s.databaseUrl "BROKER_REDIS_URL" $s.redisUrl "BROKER_VAULT_TOKEN" $s.vaultToken "BROKER_VAULT_SECRET_ID" $s.vaultSecretId "BROKER_WEBHOOK_URLS" $s.webhookUrls "BROKER_WEBHOOK_SECRET" $s.webhookSecret "BROKER_OIDC_CLIENT_SECRET" $s.oidcClientSecret }}
{{- range (include "hubspot-token-broker.secretKeys" . | fromYamlArray) }}
{{- if not (or (hasKey $s.valueFrom .) (hasKey $s.files .)) }}
{{ . }}: {{ index $fromValues . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where secrets.files mounts a secret setting's Secret (the file is "value" inside).
Usage: include "hubspot-token-broker.secretFileDir" "BROKER_VAULT_TOKEN"
*/}}
{{- define "hubspot-token-broker.secretFileDir" -}}
/etc/hubspot-token-broker/secrets/{{ . | lower | replace "_" "-" }}
{{- end }}

{{/*
A volume per secrets.files entry: the one key of the named Secret as the file "value", no
subPath, so a rotated Secret reaches the pod (the broker reads the file again when it
changes).
*/}}
{{- define "hubspot-token-broker.secretFileVolumes" -}}
{{- range $name, $ref := .Values.secrets.files }}
- name: {{ $name | lower | replace "_" "-" }}
  secret:
    secretName: {{ $ref.secretName }}
    defaultMode: 0440
    items:
      - key: {{ $ref.key }}
        path: value
{{- end }}
{{- end }}

{{- define "hubspot-token-broker.secretFileMounts" -}}
{{- range $name, $ref := .Values.secrets.files }}
- name: {{ $name | lower | replace "_" "-" }}
  mountPath: {{ include "hubspot-token-broker.secretFileDir" $name }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
env entries for every secret setting: from secrets.valueFrom when given there, else from
the Secret named by the argument.
Usage: include "hubspot-token-broker.secretEnv" (list . $secretName)
*/}}
{{- define "hubspot-token-broker.secretEnv" -}}
{{- $root := index . 0 }}
{{- $secretName := index . 1 }}
{{- range (include "hubspot-token-broker.secretKeys" $root | fromYamlArray) }}
{{- if hasKey $root.Values.secrets.files . }}
- name: {{ . }}_FILE
  value: {{ include "hubspot-token-broker.secretFileDir" . }}/value
{{- else }}
- name: {{ . }}
  valueFrom:
    {{- if hasKey $root.Values.secrets.valueFrom . }}
    {{- toYaml (index $root.Values.secrets.valueFrom .) | nindent 4 }}
    {{- else }}
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ . }}
    {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
extraEnv, refusing a name the chart already sets in env (a duplicate name is ambiguous and
breaks server-side apply). Settings from the ConfigMap may be overridden: env wins over
envFrom.
*/}}
{{- define "hubspot-token-broker.extraEnv" -}}
{{- $taken := include "hubspot-token-broker.secretKeys" . | fromYamlArray }}
{{- range .Values.extraEnv }}
{{- if has .name $taken }}
{{- fail (printf "extraEnv sets %s, which the chart already reads from a Secret: use secrets.valueFrom.%s" .name .name) }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . }}
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
The server pod's volumes: /tmp, the TLS Secret, the CA bundles, extraVolumes.
*/}}
{{- define "hubspot-token-broker.serverVolumes" -}}
{{ include "hubspot-token-broker.tmpVolume" . }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled (a kubernetes.io/tls Secret, e.g. cert-manager's)" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if include "hubspot-token-broker.fileSourceName" .Values.vault.caCert }}
{{ include "hubspot-token-broker.fileSourceVolume" (list "vault-ca" .Values.vault.caCert) }}
{{- end }}
{{- if include "hubspot-token-broker.fileSourceName" .Values.caBundle }}
{{ include "hubspot-token-broker.fileSourceVolume" (list "ca-bundle" .Values.caBundle) }}
{{- end }}
{{- with include "hubspot-token-broker.secretFileVolumes" . }}
{{ . }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The server container's volumeMounts, all read-only but /tmp.
*/}}
{{- define "hubspot-token-broker.serverVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "hubspot-token-broker.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if include "hubspot-token-broker.fileSourceName" .Values.vault.caCert }}
- name: vault-ca
  mountPath: {{ include "hubspot-token-broker.vaultCaDir" . }}
  readOnly: true
{{- end }}
{{- if include "hubspot-token-broker.fileSourceName" .Values.caBundle }}
- name: ca-bundle
  mountPath: {{ include "hubspot-token-broker.caBundleDir" . }}
  readOnly: true
{{- end }}
{{- with include "hubspot-token-broker.secretFileMounts" . }}
{{ . }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The probes' scheme: the probes reach the internal listener, which serves TLS when on.
*/}}
{{- define "hubspot-token-broker.scheme" -}}
{{- ternary "HTTPS" "HTTP" .Values.tls.enabled }}
{{- end }}

{{/*
Checks across values that the schema cannot express; each fails the render naming the fix.
*/}}
{{- define "hubspot-token-broker.validate" -}}
{{- if eq (int .Values.containerPort) (int .Values.publicContainerPort) }}
{{- fail (printf "publicContainerPort (%d) must differ from containerPort: the public listener serves only /oauth/*" (int .Values.publicContainerPort)) }}
{{- end }}
{{- /* SIGTERM -> unready, drainSeconds of serving, shutdownTimeout for in-flight work: all
before the kubelet's SIGKILL at terminationGracePeriodSeconds (a preStop sleep comes first). */}}
{{- $sleep := .Values.preStop.sleepSeconds | float64 }}
{{- $drain := .Values.config.drainSeconds | float64 }}
{{- $shutdown := .Values.config.shutdownTimeout | float64 }}
{{- $needed := addf $sleep $drain $shutdown 2 | ceil }}
{{- if lt (.Values.terminationGracePeriodSeconds | float64) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStop.sleepSeconds (%g) + config.drainSeconds (%g) + config.shutdownTimeout (%g) + 2 s = %g: Kubernetes would kill the broker (SIGKILL) before in-flight requests and refreshes finish" (int .Values.terminationGracePeriodSeconds) $sleep $drain $shutdown $needed) }}
{{- end }}
{{- if and .Values.preStop.sleepSeconds (not (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "preStop.sleepSeconds needs Kubernetes 1.30 or later (the sleep action); this cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- $budget := mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold }}
{{- $start := addf (.Values.config.prewarmSeconds | float64) 30 }}
{{- if lt ($budget | float64) $start }}
{{- fail (printf "probes.startup allows %d s (periodSeconds x failureThreshold), less than config.prewarmSeconds (%g) + 30 s to start: pods would be restarted while pre-warming" (int $budget) (.Values.config.prewarmSeconds | float64)) }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.hosts needs at least one host when ingress.enabled (a host-less rule would route every host to the broker)" }}
{{- end }}
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

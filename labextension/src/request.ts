/**
 * The one way this extension talks to the server: `/coiled-lab/api` through
 * JupyterLab's ServerConnection (base URL, token, XSRF), and the URLs of the events
 * socket and the proxied dashboards built from the same settings.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

const API = 'coiled-lab/api';

export interface IFieldError {
  field: string | null;
  error: string;
}

/** A failed request: the server's `{"error", "field", "errors"}`, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field: string | null = null,
    readonly errors: IFieldError[] = []
  ) {
    super(message);
  }

  /** The message for each field the server named (the first one per field). */
  byField(): Map<string, string> {
    const found = new Map<string, string>();
    const all = this.errors.length ? this.errors : [{ field: this.field, error: this.message }];
    for (const { field, error } of all) {
      if (field && !found.has(field)) {
        found.set(field, error);
      }
    }
    return found;
  }
}

export type Query = Record<string, string | number | boolean | null | undefined>;

function queryString(query: Query): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== '') {
      params.set(key, String(value));
    }
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

/** Call the API; resolves to the decoded JSON body, rejects with an ApiError. */
export async function requestAPI<T>(
  path: string,
  options: { method?: string; body?: unknown; query?: Query } = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API, path) + queryString(options.query ?? {});
  const init: RequestInit = { method: options.method ?? 'GET' };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, `the Jupyter server cannot be reached (${(error as Error).message})`);
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      data?.error ?? `HTTP ${response.status} ${response.statusText}`,
      data?.field ?? null,
      Array.isArray(data?.errors) ? data.errors : []
    );
  }
  return data as T;
}

/** The events WebSocket's URL, replaying what came after `after` when given. */
export function eventsURL(after: number | null): string {
  const settings = ServerConnection.makeSettings();
  const query: Query = { after };
  if (settings.token) {
    query.token = settings.token;
  }
  return URLExt.join(settings.wsUrl, API, 'events') + queryString(query);
}

/** A cluster's Dask dashboard through the Jupyter server's authenticated proxy. */
export function dashboardURL(clusterId: string, page = ''): string {
  const settings = ServerConnection.makeSettings();
  return URLExt.join(settings.baseUrl, 'coiled-lab/clusters', encodeURIComponent(clusterId), 'dashboard/') + page;
}

/**
 * A cluster's usage plots: a standalone page the server builds with bokeh (BokehJS
 * inlined), shown in an iframe so the extension bundles no plotting library.
 * `version` changes the URL so the iframe loads the page again.
 */
export function usagePlotURL(clusterId: string, version: number | string = ''): string {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API, 'clusters', encodeURIComponent(clusterId), 'usage/plot');
  return version === '' ? url : `${url}?v=${encodeURIComponent(String(version))}`;
}

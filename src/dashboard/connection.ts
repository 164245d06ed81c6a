// How the page finds and authenticates to the node that served it (pure parts unit-tested).
//
// The token is asked for once: from `?token=` (then removed from the address bar, so it does not
// stay in history or screenshots) or typed into the page, and kept in sessionStorage for this tab.

export const tokenStorageKey = 'lvnode.token';

export interface PageConfig {
  /** The node wants a token (its own, or --token's; false only under --insecure-no-auth): the WebSocket refuses connections without it. */
  token_required: boolean;
}

/** The token from the page's query, and the address without it. */
export function takeTokenFromUrl(href: string): { token: string | null; cleanedHref: string } {
  const url = new URL(href);
  const token = url.searchParams.get('token');
  if (token === null) return { token: null, cleanedHref: href };
  url.searchParams.delete('token');
  return { token, cleanedHref: url.toString() };
}

export async function fetchPageConfig(): Promise<PageConfig> {
  try {
    const response = await fetch('/config.json');
    if (!response.ok) return { token_required: false };
    return (await response.json()) as PageConfig;
  } catch {
    return { token_required: false };
  }
}
